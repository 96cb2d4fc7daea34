"""The worker's ledger as a table of transitions: no database, no fork."""

from __future__ import annotations

import uuid
from dataclasses import fields

import pytest

from pgbg.attempts import Attempt, IllegalTransition, Ledger, Phase, Retry
from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome


def task(attempt: int = 1, task_id: uuid.UUID | None = None) -> BackgroundTask:
    values = {f.name: None for f in fields(BackgroundTask)}
    values.update(id=task_id or uuid.uuid4(), task_type="t", func="m:f", args=[], kwargs={},
                  status=TaskStatus.RUNNING, attempt=attempt, max_attempts=3)
    return BackgroundTask(**values)  # type: ignore[arg-type]


def done(attempt: Attempt) -> Outcome:
    return Outcome(attempt.task.id, attempt.task.attempt, TaskStatus.SUCCEEDED)


def test_a_reaped_attempt_stays_known_until_its_outcome_is_committed() -> None:
    ledger = Ledger()
    a = ledger.claimed(task())
    ledger.started(a, 10, None)
    ledger.reported(a, {"kind": "outcome", "status": "succeeded"})
    a.decide(done(a))
    ledger.gone(a)
    ledger.ended(a)
    # the step failed: nothing committed, the ledger still holds the task
    assert ledger.known_ids() == [a.task.id]
    assert ledger.pending_finals() == [a]
    ledger.committed([a])
    assert ledger.known_ids() == [] and len(ledger) == 0


def test_an_outcome_committed_before_the_exit_waits_for_the_exit() -> None:
    ledger = Ledger()
    a = ledger.claimed(task())
    ledger.started(a, 10, None)
    ledger.reported(a, {"kind": "outcome"})
    a.decide(done(a))
    ledger.committed([a])
    assert ledger.known_ids() == [a.task.id]  # its process still runs
    # its process still runs: its slot is not claimed for again until it has exited (a
    # claim made ahead would be charged an attempt if the worker died before starting it)
    assert ledger.slots_taken() == 1 and ledger.live() == 1
    ledger.gone(a)
    assert ledger.slots_taken() == 0
    ledger.ended(a)
    assert len(ledger) == 0


def test_the_first_decision_stands() -> None:
    a = Attempt(task())
    first = done(a)
    a.decide(first)
    a.decide(Retry(a.task, "later", 1.0))
    assert a.final is first


@pytest.mark.parametrize("move", ["started", "dropped_after_start", "claimed_twice"])
def test_transitions_check_where_they_start(move: str) -> None:
    ledger = Ledger()
    a = ledger.claimed(task())
    ledger.started(a, 10, None)
    with pytest.raises(IllegalTransition):
        if move == "started":
            ledger.started(a, 11, None)
        elif move == "dropped_after_start":
            ledger.dropped(a)
        else:
            ledger.claimed(a.task)


def test_a_task_claimed_again_waits_for_its_old_process() -> None:
    ledger = Ledger()
    old = ledger.claimed(task(1))
    ledger.started(old, 10, None)
    new = ledger.claimed(task(2, old.task.id))
    assert ledger.older_alive(new) == [old]
    assert ledger.startable() == []  # not beside the old one
    ledger.gone(old)
    assert ledger.startable() == []  # exited, not reaped: its group may still run
    ledger.ended(old, done(old))
    assert ledger.startable() == [new]
    assert ledger.known_ids() == [old.task.id]  # one id, whatever its attempts


def test_phases_for_slots_and_pids() -> None:
    ledger = Ledger()
    waiting, running = ledger.claimed(task()), ledger.claimed(task())
    ledger.started(running, 10, None)
    assert (ledger.slots_taken(), ledger.live()) == (2, 1)
    assert ledger.pids_to_write() == [running]
    running.pid_written = True
    assert ledger.pids_to_write() == []
    assert waiting.phase is Phase.WAITING and ledger.startable() == [waiting]
