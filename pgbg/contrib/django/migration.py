"""pgbg's schema through ``manage.py migrate``: the same Alembic migrations as
``pgbg migrate`` (version table ``pgbg.alembic_version``), on Django's database."""

from __future__ import annotations

from typing import Any


def upgrade(alias: str) -> None:
    """Bring pgbg's schema in ``DATABASES[alias]`` up to date (idempotent, and safe to
    run concurrently: pgbg's migrations take a lock)."""
    from pgbg import migrate
    from pgbg.contrib.django import conf

    migrate.upgrade(conf.database_url(alias))


def upgrade_operation(apps: Any, schema_editor: Any) -> None:
    """``RunPython`` of the app's first migration."""
    from pgbg.contrib.django import conf

    if schema_editor.connection.alias == conf.database_alias():
        upgrade(schema_editor.connection.alias)
