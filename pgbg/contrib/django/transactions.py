"""pgbg's API in a Django project: it uses Django's database (``PGBG_DATABASE``) and joins
Django's transaction there, so a task queued inside ``transaction.atomic()`` (or while
``transaction.set_autocommit(False)`` holds one open) commits or rolls back with it.

pgbg's statements in Django's transaction run in a savepoint of their own
(``atomic(using=alias)``): a failed enqueue that the caller catches leaves its
transaction usable, as a failed ORM statement inside a nested ``atomic()`` does.

pgbg follows the database Django's connection names now, not the one it named at
``ready()``: the test runner renames it (``test_…``), its parallel workers again
(``test_…_1``); and pgbg gives up its own connections whenever Django opens one to
create or drop a database (the test runner's teardown), so they never hold one open.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pgbg
from pgbg import db

_installed: dict[str, Any] = {}  # the alias pgbg is pointed at, and the NAME it had


def install(alias: str) -> None:
    """Point pgbg at ``DATABASES[alias]`` and make its API join Django's transaction on
    that connection (``pgbg.db.use_connection``) when the caller passes no ``connection=``."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    from pgbg.contrib.django import conf

    pgbg.configure(conf.database_url(alias))
    _installed.clear()
    _installed.update(alias=alias, name=_name(connections[alias]))
    db.use_connection(lambda: current(alias), lambda connection: scope(alias))
    connection_created.connect(_connection_created, dispatch_uid="pgbg.contrib.django.follow")


def current(alias: str) -> Any:
    """Django's connection ``alias`` while it is in a transaction (``atomic()``, or
    autocommit turned off), else None."""
    from django.db import connections

    follow()
    connection = connections[alias]
    return connection if in_transaction(connection) else None


def in_transaction(connection: Any) -> bool:
    """Whether Django's ``connection`` has a transaction that pgbg must join."""
    return bool(connection.in_atomic_block) or (
        connection.connection is not None and not connection.autocommit)


def scope(alias: str) -> AbstractContextManager[Any]:
    """Around pgbg's statements in Django's transaction: a savepoint."""
    from django.db import transaction

    atomic: AbstractContextManager[Any] = transaction.atomic(using=alias)
    return atomic


def follow() -> None:
    """Point pgbg at the database Django's connection names now, if that changed."""
    from django.db import connections

    alias = _installed.get("alias")
    if alias is not None and _name(connections[alias]) != _installed["name"]:
        install(alias)


def _name(connection: Any) -> Any:
    return connection.settings_dict.get("NAME")


def _connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    """A Django connection was opened: follow a renamed database; before Django creates
    or drops one (its connection to no database), let go of pgbg's own connections."""
    from django.db.backends.base.base import NO_DB_ALIAS

    if connection.alias == NO_DB_ALIAS:
        alias = _installed.get("alias")
        if alias is not None:
            install(alias)  # configure(): closes pgbg's connections, reopened on demand
        return
    if connection.alias == _installed.get("alias"):
        follow()
