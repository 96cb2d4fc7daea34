"""The tasks ``pgbg bench`` runs. Kept apart and light, as an application's task module
should be: the fork server imports it, and everything it imports makes every fork dearer."""

from __future__ import annotations

import time


def noop() -> None:
    return None


def sleep_ms(ms: float) -> None:
    time.sleep(ms / 1000)


def started() -> float:
    return time.time()


def block() -> None:
    while True:
        time.sleep(60)
