"""One schema source: the migrations produce exactly the SQLAlchemy metadata."""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pgbg import migrate
from pgbg.models import TaskStatus
from pgbg.schema import SCHEMA, metadata


def _engine(url: str) -> sa.Engine:
    return sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool,
                            creator=lambda: psycopg.connect(url))


def _schema_diff(url: str) -> list[Any]:
    engine = _engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "include_schemas": True,
            "version_table_schema": SCHEMA,
            "include_name": lambda name, type_, _p: name == SCHEMA if type_ == "schema" else True,
        })
        return list(compare_metadata(context, metadata))


def test_migrations_match_metadata(database_url: str) -> None:
    assert _schema_diff(database_url) == []


def test_every_revision_downgrades_and_upgrades_again(database_url: str,
                                                      conn: psycopg.Connection[Any]) -> None:
    config = migrate._config(database_url)
    command.downgrade(config, "base")
    row = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname = 'pgbg' "
                       "AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')").fetchone()
    assert row == (0,)  # every table, index, view and sequence gone
    assert conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n "
                        "ON n.oid = p.pronamespace WHERE n.nspname = 'pgbg'").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_type t JOIN pg_namespace n "
                        "ON n.oid = t.typnamespace WHERE n.nspname = 'pgbg' "
                        "AND t.typtype = 'e'").fetchone() == (0,)  # the status enum too
    command.upgrade(config, "head")
    assert _schema_diff(database_url) == []


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
        "EXPLAIN SELECT id FROM pgbg.task WHERE status = 'queued' AND num_proc = 0 "
        "AND num_of_task_type = '{}'::jsonb ORDER BY priority DESC, queued_at, id LIMIT 1"))
    assert "task_claim_free_idx" in plan, plan  # the claim's stream of unlimited tasks
    assert "Seq Scan" not in plan, plan
