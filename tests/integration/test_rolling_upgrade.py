"""Rolling upgrades: a worker keeps working on a schema a newer pgbg migrated, and
``pgbg doctor`` says when workers of different versions run at once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
from conftest import Driver

import pgbg
from pgbg import admin, db, queries
from pgbg.models import BackgroundTask


def test_a_column_added_by_a_newer_migration_is_ignored(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    conn.execute("ALTER TABLE pgbg.task ADD COLUMN from_the_future text NOT NULL DEFAULT 'x', "
                 "ADD COLUMN another_one jsonb DEFAULT '{}'")
    result = pgbg.run_in_background(tasks.add, "t", 2, 3)
    make_worker(1).until_done(result)
    task = pgbg.get_task(result)
    assert (task.status, task.result) == (pgbg.TaskStatus.SUCCEEDED, 5)
    assert pgbg.get_task_log(result) is not None
    # the claim function's rows carry the new columns too
    queued = pgbg.run_in_background(tasks.add, "t", 1, 1)
    claimed = queries.task_claim(conn, uuid.uuid4(), "host", 1)
    assert [t.id for t in claimed] == [queued.id]


def test_unknown_fields_on_the_wire_are_ignored() -> None:
    task = BackgroundTask(id=uuid.uuid4(), task_type="t", func="m:f", args=[], kwargs={},
                          priority=0, status=pgbg.TaskStatus.QUEUED, num_proc=0,
                          num_of_task_type={}, queued_at=datetime.now(UTC))
    wire = {**task.to_wire(), "from_the_future": 1}
    assert BackgroundTask.from_wire(wire) == task


def test_doctor_reports_workers_of_different_versions(
        make_worker: Callable[..., Driver], database_url: str) -> None:
    driver = make_worker(1)
    driver.worker.run_once(timeout=0)  # connected: its connection names its version
    assert all(check.ok for check in admin.doctor())
    older = psycopg.connect(database_url, application_name=f"pgbg worker {uuid.uuid4()} v0.0.1")
    try:
        problems = {c.name: c for c in admin.doctor() if not c.ok}
        assert set(problems) == {"worker versions"}
        assert "0.0.1" in problems["worker versions"].value
        assert db.VERSION in problems["worker versions"].value
    finally:
        older.close()
