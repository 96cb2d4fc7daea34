"""Alembic environment for pgbg.

The version table lives in schema ``pgbg`` (``pgbg.alembic_version``), so an application
with its own Alembic history in ``public`` keeps it untouched, and only objects of schema
``pgbg`` are compared. Concurrent ``pgbg migrate`` runs serialise on an advisory lock held
for their one transaction.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool, text

from pgbg import db
from pgbg.schema import SCHEMA, metadata

MIGRATION_LOCK = 0x70676267_6D696772  # 'pgbg' 'migr'


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    if type_ == "table":
        return getattr(obj, "schema", None) == SCHEMA
    return True


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_object=include_object,
        include_name=include_name,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url="postgresql://", literal_binds=True, dialect_name="postgresql")
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()


def run_online() -> None:
    url = context.config.attributes.get("pgbg_url") or db.database_url()
    # pgbg's own connection (nothing prepared behind a transaction-pooling PgBouncer, READ
    # COMMITTED whatever the server's default) and one transaction for everything, its
    # lock released by the commit: nothing outlives it on the server connection, which a
    # transaction-pooling PgBouncer may hand to another client the moment it ends.
    engine = create_engine("postgresql+psycopg://", poolclass=pool.NullPool,
                           creator=lambda: db.connect(url, autocommit=False,
                                                      application_name="pgbg migrate"))
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
