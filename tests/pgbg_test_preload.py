"""A task module that knows which process imported it: the fork server, once a task of
this module has run, so every later child starts with it loaded."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()


def imported_before_fork() -> bool:
    return IMPORTED_BY != os.getpid()
