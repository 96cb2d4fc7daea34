"""The worker's record of every task attempt it holds, from claim until its end is
committed: one ``Attempt`` each, in one ``Ledger``, each in exactly one ``Phase``.

No I/O here. Reconnects, stops, recovery and kills read the ledger, never "which
container holds it": an attempt leaves the ledger only once its process is over *and*
the write that ends it (its ``final``) is committed, so whatever the worker tells the
database it no longer holds (``known_ids``) is truly over.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome

Key = tuple[uuid.UUID, int]  # (task id, attempt)


class Phase(Enum):
    WAITING = "waiting"  # claimed; no process yet (waiting for a slot or a spare)
    RUNNING = "running"  # handed to a process
    REPORTED = "reported"  # the function returned and said how; its process is exiting
    GONE = "gone"  # its process has exited (its slot is free); not yet reaped
    ENDED = "ended"  # reaped, lost with the fork server, or ended before it started


ALIVE = (Phase.RUNNING, Phase.REPORTED)  # a process that may still run task code


@dataclass(frozen=True)
class Retry:
    """The attempt failed and the task runs again after ``delay`` seconds."""

    task: BackgroundTask
    error: str
    delay: float


Final = Outcome | Retry  # the one write that ends an attempt


class IllegalTransition(RuntimeError):
    """A transition asked of an attempt in a phase it cannot leave that way."""


@dataclass(eq=False)
class Attempt:
    task: BackgroundTask
    phase: Phase = Phase.WAITING
    pid: int | None = None  # its process, once started
    process: Any = None  # the worker's handle on that process (children.py)
    pid_written: bool = False  # the row has its pid
    deadline: float | None = None  # when its time limit runs out (monotonic)
    kill_reason: str | None = None  # why the worker killed it, if it did
    kill_status: TaskStatus = TaskStatus.TERMINATED  # what that kill is recorded as
    escalate_at: float | None = None  # when a SIGTERM becomes SIGKILL
    error_exit: bool = False  # the task recorded its own failure
    report: dict[str, Any] | None = None  # the child's own account of how it ended
    final: Final | None = None  # decided once
    final_committed: bool = False

    @property
    def key(self) -> Key:
        return (self.task.id, self.task.attempt)

    def _move(self, to: Phase, *allowed: Phase) -> None:
        if self.phase not in allowed:
            raise IllegalTransition(f"attempt {self.key} cannot go from {self.phase.value} "
                                    f"to {to.value}")
        self.phase = to

    def decide(self, final: Final) -> None:
        """Set how the attempt ends; the first decision stands."""
        if self.final is None:
            self.final = final


class Ledger:
    """Every attempt the worker holds, by (task id, attempt)."""

    def __init__(self) -> None:
        self._attempts: dict[Key, Attempt] = {}

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._attempts.values()))

    def __len__(self) -> int:
        return len(self._attempts)

    # -- transitions ----------------------------------------------------------------

    def claimed(self, task: BackgroundTask) -> Attempt:
        attempt = Attempt(task)
        if attempt.key in self._attempts:
            raise IllegalTransition(f"attempt {attempt.key} was claimed twice")
        self._attempts[attempt.key] = attempt
        return attempt

    def started(self, attempt: Attempt, pid: int, process: Any) -> None:
        attempt._move(Phase.RUNNING, Phase.WAITING)
        attempt.pid, attempt.process = pid, process

    def reported(self, attempt: Attempt, report: dict[str, Any]) -> None:
        """The function's outcome arrived (only the first one counts)."""
        if attempt.report is None:
            attempt.report = report
        if attempt.phase is Phase.RUNNING:
            attempt.phase = Phase.REPORTED

    def gone(self, attempt: Attempt) -> None:
        attempt._move(Phase.GONE, Phase.RUNNING, Phase.REPORTED, Phase.GONE)

    def ended(self, attempt: Attempt, final: Final | None = None) -> None:
        """Its process is reaped or lost (or it never had one); ``final`` unless decided."""
        attempt._move(Phase.ENDED, *Phase)
        if final is not None:
            attempt.decide(final)
        self._forget_if_done(attempt)

    def dropped(self, attempt: Attempt) -> None:
        """A claim never started that the worker gives up (its row is released as one
        this worker does not know)."""
        if attempt.phase is not Phase.WAITING:
            raise IllegalTransition(f"attempt {attempt.key} has a process: it cannot be dropped")
        del self._attempts[attempt.key]

    def committed(self, finals: list[Attempt]) -> None:
        """These attempts' finals are in the database."""
        for attempt in finals:
            attempt.final_committed = True
            self._forget_if_done(attempt)

    def _forget_if_done(self, attempt: Attempt) -> None:
        if attempt.phase is Phase.ENDED and attempt.final_committed:
            self._attempts.pop(attempt.key, None)

    # -- queries ----------------------------------------------------------------------

    def in_phase(self, *phases: Phase) -> list[Attempt]:
        return [a for a in self._attempts.values() if a.phase in phases]

    def slots_taken(self) -> int:
        """Slots to count when claiming: every attempt whose process may still run, and
        those waiting to start. A slot's next task is claimed only once its process has
        exited: a claim made ahead of a free slot, were the worker to die before starting
        it, would be charged an attempt for a task that never ran."""
        return len(self.in_phase(Phase.WAITING, *ALIVE))

    def live(self) -> int:
        """Processes that have not exited: a new one starts only below the concurrency."""
        return len(self.in_phase(*ALIVE))

    def startable(self) -> list[Attempt]:
        """Waiting attempts, oldest claim first, whose task has no older attempt of ours
        still alive (a recovered task claimed again waits until its old process is gone)."""
        alive_ids = {a.task.id for a in self.in_phase(*ALIVE, Phase.GONE)}
        return [a for a in self.in_phase(Phase.WAITING) if a.task.id not in alive_ids]

    def older_alive(self, attempt: Attempt) -> list[Attempt]:
        """Other attempts of the same task whose process still runs."""
        return [a for a in self.in_phase(*ALIVE) if a.task.id == attempt.task.id
                and a is not attempt]

    def undecided(self) -> list[Attempt]:
        """Attempts whose end is not yet decided: what cancel requests and ownership
        checks are about."""
        return [a for a in self._attempts.values() if a.final is None]

    def pending_finals(self) -> list[Attempt]:
        return [a for a in self._attempts.values()
                if a.final is not None and not a.final_committed]

    def pids_to_write(self) -> list[Attempt]:
        return [a for a in self._attempts.values()
                if a.pid is not None and not a.pid_written and a.final is None]

    def known_ids(self) -> list[uuid.UUID]:
        """Every task id in any phase: the only list a release of "what this worker does
        not hold" may be given."""
        return list({a.task.id for a in self._attempts.values()})

    def by_id(self, task_id: str) -> list[Attempt]:
        return [a for a in self._attempts.values() if str(a.task.id) == task_id]
