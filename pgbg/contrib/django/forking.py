"""Django in pgbg's fork server, for ``manage.py pgbg worker``.

The worker starts its fork server with ``PGBG_DJANGO=1`` and the same
``DJANGO_SETTINGS_MODULE``; the fork server calls ``setup()`` before it forks any task's
child, so task modules may import models, and every child starts with the apps loaded.

A child must never use, nor close, a database connection it inherited: closing one ends the
parent's session on the shared socket (``connections.close_all()`` in a child would). After
each fork the child forgets Django's connections and connection pools (kept referenced,
never closed or finalised) and opens its own on first use.
"""

from __future__ import annotations

import os
from typing import Any

ENV = "PGBG_DJANGO"
_inherited: list[Any] = []  # what a child must keep but never touch


def setup() -> None:
    import django

    django.setup()
    os.register_at_fork(after_in_child=forget_connections)


def forget_connections() -> None:
    """In a forked child: Django's connections as if none had been opened."""
    from asgiref.local import Local
    from django.db import connections

    _forget_pools()
    if hasattr(connections, "_connections"):  # fresh wrappers, created on first use
        _inherited.append(connections._connections)
        connections._connections = Local(connections.thread_critical)
        return
    for wrapper in connections.all(initialized_only=True):  # pragma: no cover - older layout
        _inherited.append(wrapper.connection)
        wrapper.connection = None


def _forget_pools() -> None:
    """Django's connection pools (``OPTIONS["pool"]``) live in a class attribute of the
    PostgreSQL backend, not in ``connections``: a child must not take the fork server's
    pooled sessions, so it starts with no pool (its own opens on first use)."""
    import sys

    backend = sys.modules.get("django.db.backends.postgresql.base")
    pools = getattr(getattr(backend, "DatabaseWrapper", None), "_connection_pools", None)
    if isinstance(pools, dict) and pools:
        _inherited.append(dict(pools))  # kept referenced: never closed, never finalised
        pools.clear()
