"""Bring the database up to date: the shop's history, then pgbg's, side by side.

    SHOP_DATABASE_URL=postgresql+psycopg://… python -m shop.deploy
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from pgbg import migrate as pgbg_migrations
from shop import database

ALEMBIC_INI = Path(__file__).parents[1] / "alembic.ini"


def migrate() -> None:
    command.upgrade(Config(str(ALEMBIC_INI)), "head")  # public.alembic_version
    database.engine()  # configures pgbg with the shop's engine
    pgbg_migrations.upgrade()  # pgbg.alembic_version


if __name__ == "__main__":
    migrate()
