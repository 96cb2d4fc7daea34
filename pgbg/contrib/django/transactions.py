"""pgbg's API in a Django project: it uses Django's database (``PGBG_DATABASE``) and joins
Django's transaction there, so a task queued inside ``transaction.atomic()`` commits or
rolls back with it."""

from __future__ import annotations

from typing import Any

import pgbg
from pgbg import db


def install(alias: str) -> None:
    """Point pgbg at ``DATABASES[alias]`` and make its API join Django's transaction on
    that connection (``pgbg.db.use_connection``) when the caller passes no ``connection=``."""
    from pgbg.contrib.django import conf

    pgbg.configure(conf.database_url(alias))
    use_connection = getattr(db, "use_connection", None)
    if use_connection is not None:  # pgbg >= the release that added it
        use_connection(lambda: current(alias))


def current(alias: str) -> Any:
    """Django's connection ``alias`` while it is inside ``atomic()``, else None."""
    from django.db import connections

    connection = connections[alias]
    return connection if connection.in_atomic_block else None
