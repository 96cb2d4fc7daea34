"""Many workers, one enqueue: only the worker on duty hears of it (pgbg/duty.py).

In-process workers stepped in turn by the test: every claim step each one runs is counted
(its database's ``step`` with room to claim), and a notification every worker hears
(PERIODIC) sent after the task tells when each has seen all that came before it, so a
worker that would react to the enqueue has done so by then.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, wait_for

import pgbg
from pgbg import db, notify


class Counted:
    """A worker and how many claim steps and periodic looks it has run."""

    def __init__(self, driver: Driver) -> None:
        self.worker = driver.worker
        self.claims = 0
        self.periodic_looks = 0
        db = self.worker._db
        step, enqueue_periodic = db.step, db.enqueue_periodic

        def counted_step(records: Any, finals: Any, pids: Any, max_claim: int,
                         known: Any) -> Any:
            self.claims += max_claim > 0
            return step(records, finals, pids, max_claim, known)

        def counted_periodic(now: Any) -> Any:
            self.periodic_looks += 1
            return enqueue_periodic(now)

        db.step = counted_step  # type: ignore[method-assign]
        db.enqueue_periodic = counted_periodic  # type: ignore[method-assign]


def step_all(workers: Sequence[Counted], until: Callable[[], Any],
             timeout: float = 60.0) -> None:
    def turn() -> Any:
        for w in workers:
            w.worker.run_once(timeout=0.01)
        return until()

    wait_for(turn, timeout, interval=0, message="the workers to get there")


def settle(workers: Sequence[Counted], conn: psycopg.Connection[Any]) -> None:
    """Step every worker until each has handled a notification sent now (and so all
    those sent before it)."""
    looked = [w.periodic_looks for w in workers]
    conn.execute("SELECT pg_notify(%s, '')", (notify.PERIODIC,))
    step_all(workers, lambda: all(w.periodic_looks > n for w, n in zip(workers, looked,
                                                                        strict=True)))


def start(make_worker: Callable[..., Driver], n: int, concurrency: int) -> list[Counted]:
    # with LISTEN no poll, so that every claim step comes from a notification or a freed
    # slot; poll-only, the poll is all there is
    poll = 3600 if db.listen_enabled() else 0.2
    workers = [Counted(make_worker(concurrency, poll_interval=poll)) for _ in range(n)]
    step_all(workers, lambda: all(w.claims for w in workers))  # each made its first claim
    return workers


@pytest.mark.listen
def test_one_enqueue_wakes_one_of_eight_idle_workers(make_worker: Callable[..., Driver],
                                                     conn: psycopg.Connection[Any]) -> None:
    workers = start(make_worker, 8, 2)
    settle(workers, conn)
    before = [w.claims for w in workers]
    result = pgbg.enqueue(tasks.add, args=(2, 3), task_type="herd")
    step_all(workers, lambda: pgbg.get_task(result).complete)
    settle(workers, conn)
    task = pgbg.get_task(result)
    assert task.completed_successfully and task.result == 5
    claims = {w.worker.id: w.claims - n for w, n in zip(workers, before, strict=True)}
    ran_it = claims.pop(task.worker_id)
    # the claim that took it and the one that wrote its outcome; nobody else stirred
    assert ran_it <= 2
    assert sum(claims.values()) == 0, claims


@pytest.mark.listen
def test_a_full_worker_on_duty_hands_a_new_task_on(make_worker: Callable[..., Driver],
                                                   conn: psycopg.Connection[Any],
                                                   tmp_path: Path) -> None:
    workers = start(make_worker, 2, 1)
    release = tmp_path / "release"
    first = pgbg.enqueue(tasks.block_until, args=(str(release),), task_type="herd")
    step_all(workers, lambda: pgbg.get_task(first).pid)
    second = pgbg.enqueue(tasks.add, args=(1, 1), task_type="herd")
    # the first still blocks its worker's only slot: the other worker takes the second
    step_all(workers, lambda: pgbg.get_task(second).complete)
    assert pgbg.get_task(second).worker_id != pgbg.get_task(first).worker_id
    assert not pgbg.get_task(first).complete
    release.touch()
    step_all(workers, lambda: pgbg.get_task(first).complete)


def test_a_burst_runs_once_each_on_four_workers(make_worker: Callable[..., Driver],
                                                tmp_path: Path) -> None:
    """More tasks than slots: each worker fills up, and picks up more as slots free."""
    workers = start(make_worker, 4, 2)
    release, ledger = tmp_path / "release", tmp_path / "ledger"
    release.touch()
    values = [str(uuid.uuid4()) for _ in range(40)]
    results = pgbg.enqueue_many(tasks.append_when,
                                [(str(release), str(ledger), v) for v in values],
                                task_type="herd")
    step_all(workers, lambda: all(pgbg.get_task(r).complete for r in results), timeout=120)
    ran = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert sorted(ran) == sorted(values)  # each exactly once
    finished = [pgbg.get_task(r) for r in results]
    assert all(t.completed_successfully and t.attempt == 1 for t in finished)
