"""Periodic tasks with real worker processes racing, on a clock the test moves."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import WorkerProcess, wait_for

import pgbg


def set_clock(path: Path, now: datetime) -> None:
    staging = path.with_suffix(".new")
    staging.write_text(now.isoformat())
    os.replace(staging, path)  # a worker never reads half a time


@pytest.mark.slow
def test_racing_worker_processes_queue_each_period_once(
        worker_process: Callable[..., WorkerProcess], conn: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    # a task lost with the worker killed below runs again elsewhere
    start = pgbg.add_periodic("minutely", tasks.add, [2, 3], every=60,
                              max_attempts=2).next_run_at
    clock = tmp_path / "clock"
    set_clock(clock, start - timedelta(seconds=1))
    workers = [worker_process(2, "--clock", str(clock), "--lease", "3", "--heartbeat-interval",
                              "0.5", entry=("pgbg_test_clock_worker",)) for _ in range(3)]

    def periods() -> list[datetime]:
        return [r[0] for r in conn.execute(
            "SELECT period FROM pgbg.task WHERE periodic = 'minutely' ORDER BY period")]

    for k in range(20):
        if k == 10:
            workers[0].signal(signal.SIGKILL)  # one racer dies; the others carry on
            workers[0].wait()
        set_clock(clock, start + timedelta(seconds=60 * k + 1))
        conn.execute("NOTIFY pgbg_periodic")  # poll-only workers find it on their poll
        wait_for(lambda k=k: len(periods()) == k + 1, timeout=60,
                 message=f"the task of period {k}")
    # workers down for a while: the missed periods become one task
    set_clock(clock, start + timedelta(seconds=60 * 30 + 1))
    conn.execute("NOTIFY pgbg_periodic")
    wait_for(lambda: len(periods()) == 21, timeout=60, message="the late period's task")

    expected = [start + timedelta(seconds=60 * k) for k in range(20)]
    assert periods() == [*expected, start + timedelta(seconds=60 * 30)]
    wait_for(lambda: conn.execute(
        "SELECT count(*) FROM pgbg.task WHERE periodic = 'minutely' AND status = 'succeeded'"
    ).fetchone() == (21,), timeout=60, message="every periodic task to run")
    assert all(w.proc.poll() is None for w in workers[1:])
