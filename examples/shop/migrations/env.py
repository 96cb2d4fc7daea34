"""The shop's Alembic environment: the shop's tables only.

Autogenerate compares the default schema alone (no ``include_schemas``), so it never sees
pgbg's tables, let alone proposes to drop them; the filter below says so explicitly.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context

from shop import database
from shop.models import Base

if context.config.config_file_name:
    fileConfig(context.config.config_file_name)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return name != "pgbg" if type_ == "schema" else True  # pgbg migrates itself


with database.engine().connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()
