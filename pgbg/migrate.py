"""Running pgbg's Alembic migrations from the installed package, from any directory."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from pgbg import db


def _config(url: str | None = None, output: io.StringIO | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    config.attributes["pgbg_url"] = url
    return config


def _migrations_dir() -> Path:
    """Where the migrations are: shipped as the package ``pgbg.migrations``."""
    spec = importlib.util.find_spec("pgbg.migrations")
    assert spec is not None and spec.origin is not None, "pgbg is installed without migrations"
    return Path(spec.origin).parent


def upgrade(url: str | None = None) -> None:
    """Bring the ``pgbg`` schema up to date (safe to run concurrently)."""
    from alembic import command

    url = db.libpq_url(url) if url else db.database_url()
    db.connect(url).close()  # an unreachable database is one clear DatabaseUnavailable
    command.upgrade(_config(url), "head")


def upgrade_sql() -> str:
    """The DDL ``upgrade`` would run, as text."""
    from alembic import command

    output = io.StringIO()
    command.upgrade(_config(output=output), "head", sql=True)
    return output.getvalue()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head
