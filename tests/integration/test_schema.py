"""One schema source: the migrations produce exactly the SQLAlchemy metadata."""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pgbg import migrate
from pgbg.models import TaskStatus
from pgbg.schema import SCHEMA, metadata


def _engine(url: str) -> sa.Engine:
    return sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool,
                            creator=lambda: psycopg.connect(url))


def test_migrations_match_metadata(database_url: str) -> None:
    engine = _engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "include_schemas": True,
            "version_table_schema": SCHEMA,
            "include_name": lambda name, type_, _p: name == SCHEMA if type_ == "schema" else True,
        })
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_status_enum_matches_database(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT enum_range(NULL::pgbg.task_status)::text[]").fetchone()
    assert row is not None
    assert row[0] == [s.value for s in TaskStatus]


def test_version_table_lives_in_pgbg_schema(conn: psycopg.Connection[Any]) -> None:
    tables = conn.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
    ).fetchall()
    assert tables == [("pgbg",)]
    row = conn.execute("SELECT version_num FROM pgbg.alembic_version").fetchone()
    assert row == (migrate.head_revision(),)


def test_migrate_is_idempotent(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.upgrade(database_url)


def test_complete_flags_follow_status(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO pgbg.task (id, task_type, func) "
                 "VALUES (gen_random_uuid(), 't', 'm:f')")
    for status in TaskStatus:
        conn.execute("UPDATE pgbg.task SET status = %s", (status.value,))
        row = conn.execute("SELECT complete, completed_successfully FROM pgbg.task").fetchone()
        assert row == (status.is_terminal, status is TaskStatus.SUCCEEDED)


def test_claim_uses_partial_index_on_large_history(conn: psycopg.Connection[Any]) -> None:
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, finished_at)
                    SELECT gen_random_uuid(), 't', 'm:f', 'succeeded', now()
                      FROM generate_series(1, 20000)""")
    conn.execute("INSERT INTO pgbg.task (id, task_type, func) "
                 "VALUES (gen_random_uuid(), 't', 'm:f')")
    conn.execute("ANALYZE pgbg.task")
    plan = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN SELECT id FROM pgbg.task WHERE status = 'queued' "
        "ORDER BY priority DESC, queued_at, id LIMIT 1"))
    assert "task_claim_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
