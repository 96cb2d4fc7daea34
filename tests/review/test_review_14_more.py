"""Review of issue 14, second batch: exploratory attacks."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import count_tasks as count
from psycopg.rows import dict_row

import pgbg
from pgbg import aio, db
from pgbg.models import BackgroundTask


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def test_use_connection_enqueue_many_is_all_or_none_on_an_autocommit_connection(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    """db.use_connection (the Django hook): Django's connection is autocommit outside
    atomic(). enqueue_many promises all or none."""
    conn.execute("""CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN IF NEW.args = '["boom"]'::jsonb THEN
                      RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$""")
    conn.execute("CREATE TRIGGER refuse_boom BEFORE INSERT ON pgbg.task FOR EACH ROW "
                 "EXECUTE FUNCTION refuse_boom()")
    with psycopg.connect(database_url, autocommit=True) as app:
        db.use_connection(lambda: app)
        try:
            with pytest.raises(pgbg.PgbgError):
                pgbg.enqueue_many(tasks.echo, [[i] for i in range(6000)] + [["boom"]],
                                  task_type="t")
        finally:
            db.use_connection(None)
    assert count(conn) == 0


def test_get_task_times_keep_the_session_time_zone(database_url: str,
                                                   conn: psycopg.Connection[Any]) -> None:
    """get_task's datetimes are as before the change: aware in the session's time zone
    (psycopg's ZoneInfo), so local-time arithmetic across DST stays right."""
    conn.execute(f'ALTER DATABASE "{_dbname(database_url)}" SET timezone = '
                 "'America/New_York'")
    pgbg.configure(database_url)  # new connections pick the zone up
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with psycopg.connect(database_url) as fresh, fresh.cursor(row_factory=dict_row) as cur:
        before = BackgroundTask.from_row(
            cur.execute("SELECT * FROM pgbg.task WHERE id = %s", (result.id,)).fetchone())
    now = pgbg.get_task(result)
    later = timedelta(days=182)
    assert (now.queued_at + later).utcoffset() == (before.queued_at + later).utcoffset()
    queued = pgbg.get_queued_tasks()[0]
    assert (queued.queued_at + later).utcoffset() == (before.queued_at + later).utcoffset()


def test_aio_enqueue_many_with_a_non_sequence_args_list() -> None:
    with pytest.raises(pgbg.PgbgError):
        asyncio.run(aio.enqueue_many(tasks.add, 5, task_type="t"))  # type: ignore[arg-type]


def test_a_declared_method_is_refused_at_decoration() -> None:
    """"The decorated function stays callable as before": a method would not be (a worker
    calls it without an instance), so decoration refuses it with a clear error."""
    with pytest.raises(pgbg.InvalidTaskFunction, match="defined in a class"):
        class Importer:
            @pgbg.task(task_type="method")
            def run(self, path: str) -> str:
                return f"{type(self).__name__} {path}"


def test_get_task_field_types_are_as_before(conn: psycopg.Connection[Any]) -> None:
    """get_task now reads the row as JSON: a float column holding a whole number (timeout
    600.0, retry_backoff 2.0) comes back as an int; before the change it was a float."""
    result = pgbg.enqueue(tasks.add, [1, 1], task_type="t", timeout=600.0, retry_backoff=2.0,
                          retry_on=[ValueError])
    with conn.cursor(row_factory=dict_row) as cur:
        before = BackgroundTask.from_row(
            cur.execute("SELECT * FROM pgbg.task WHERE id = %s", (result.id,)).fetchone())
    now = pgbg.get_task(result)
    changed = {name: (type(getattr(before, name)).__name__, type(getattr(now, name)).__name__)
               for name in before.__dataclass_fields__
               if type(getattr(before, name)) is not type(getattr(now, name))}
    assert changed == {}


@pytest.mark.parametrize("timeout", ["5", float("nan")])
def test_aio_wait_task_refuses_a_bad_timeout(conn: psycopg.Connection[Any],
                                             timeout: Any) -> None:
    """A timeout that is not a number of seconds: a clear InvalidOption, not a raw
    TypeError (\"5\") or an immediate TimeoutError for a task that was never waited on
    (nan)."""
    queued = pgbg.run_in_background(tasks.add, "t", 1, 1)
    with pytest.raises(pgbg.InvalidOption):
        asyncio.run(aio.wait_task(queued, timeout=timeout))
