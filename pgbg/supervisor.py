"""What the worker does to its tasks' processes and hears from them, kept in its ledger.

``Supervisor`` starts claimed attempts in spare children, turns what the children say
and how they end into ledger transitions and records to write, and kills: a terminate
request, a time limit, the hard stop, a lease that could not be renewed. No SQL here:
the worker writes what the ledger and ``records`` hold.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from pgbg import children, decisions
from pgbg.attempts import ALIVE, Attempt, Ledger, Phase, Retry
from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome
from pgbg.storable import clean_text
from pgbg.workerdb import ErrorExit, Info, Link, Output, Record, ReleaseUnknown

logger = logging.getLogger(__name__)
PID_DELAY = 0.05  # seconds a recorded pid may wait for a commit to share
FORKSERVER_LOST = "the worker's fork server died while the task ran"
LEASE_LAPSED = ("killed: the worker could not renew its lease in time, so the task is "
                "recovered by another worker")
NOT_OURS = "the task is no longer this worker's"


@dataclasses.dataclass
class Policy:
    """The worker's options that decide what happens to a task's process."""

    concurrency: int
    kill_grace: float
    task_timeout: float | None
    retry_backoff: float
    allow: tuple[str, ...] | None
    lease: float


class Supervisor:
    def __init__(self, policy: Policy, processes: children.Children) -> None:
        self.policy = policy
        self.children = processes
        self.ledger = Ledger()
        self.records: list[Record] = []  # in order; written before the outcomes
        self.pids_due = 0.0  # when a pid waiting alone is written
        self.lease_until = float("inf")  # monotonic: our lease surely holds until then
        self._lapse_noted = False

    # -- starting ----------------------------------------------------------------------

    def claimed(self, tasks: Sequence[BackgroundTask],
                unreadable: Sequence[tuple[BackgroundTask, str]] = ()) -> None:
        for task, problem in unreadable:  # each fails alone
            self.ledger.ended(self.ledger.claimed(task), Outcome(
                task.id, task.attempt, TaskStatus.FAILED, error=f"cannot run: {problem}"))
        for task in tasks:
            attempt = self.ledger.claimed(task)
            for older in self.ledger.older_alive(attempt):
                # Recovered from under us and claimed again: the old process must be gone
                # before the new one starts.
                self.kill(older, NOT_OURS)
            if not decisions.allowed(task.func, self.policy.allow):
                self.ledger.ended(attempt, Outcome(
                    task.id, task.attempt, TaskStatus.FAILED,
                    error=f"not allowed: {task.func} is outside this worker's allowed "
                          f"modules ({', '.join(self.policy.allow or ())})"))
            elif self.children.declared is not None and task.func not in self.children.declared:
                self.ledger.ended(attempt, Outcome(
                    task.id, task.attempt, TaskStatus.FAILED,
                    error=f"not allowed: {task.func} is not declared with @pgbg.task in this "
                          "worker's task modules (--registered-only)"))
        self.start_waiting()

    def start_waiting(self) -> None:
        """Start claimed tasks while fewer than ``concurrency`` processes are alive: each is
        written straight into a spare child (and its pid recorded with the next write)."""
        if not self.lease_held(time.monotonic()):
            return
        for attempt in self.ledger.startable():
            if self.ledger.live() >= self.policy.concurrency:
                return
            spare = self.children.start(attempt)
            if spare is None:
                return  # no spare yet: the fork server announces the next one shortly
            self.ledger.started(attempt, spare.pid, spare)
            limit = attempt.task.timeout or self.policy.task_timeout
            if limit:
                attempt.deadline = time.monotonic() + limit
            if not self.ledger.pids_to_write()[1:]:
                self.pids_due = time.monotonic() + PID_DELAY

    def drop_waiting(self, reason: str) -> None:
        """Give claimed tasks that never started back to the queue (the attempt is undone)."""
        waiting = self.ledger.in_phase(Phase.WAITING)
        if not waiting:
            return
        for attempt in waiting:
            logger.info("releasing a task that had not started", extra={
                "task_id": str(attempt.task.id), "status": reason})
            self.ledger.dropped(attempt)
        self.records.append(ReleaseUnknown())

    # -- hearing from children ---------------------------------------------------------

    def handle(self, data: Any) -> bool:
        """What the selector reported of the fork server or a child; True if a slot may
        have freed up (a claim is worth making)."""
        self.check_lease(time.monotonic())
        freed = False
        for kind, attempt, value in self.children.handle(data):
            if kind == "message":
                freed |= self._on_message(attempt, value)
            elif kind == "output":
                self._on_output(attempt, [clean_text(text) for text in value])
            elif kind == "gone":
                self.ledger.gone(attempt)
                freed = True
            elif kind == "exited":
                code = os.waitstatus_to_exitcode(value)  # negative: a signal
                self._ended(attempt, code if code >= 0 else None, -code if code < 0 else None)
            elif kind == "lost":
                self.ledger.ended(attempt, Outcome(attempt.task.id, attempt.task.attempt,
                                                   TaskStatus.FAILED, error=FORKSERVER_LOST))
        self.start_waiting()
        return freed

    def _on_output(self, attempt: Attempt, texts: list[str]) -> None:
        last = self.records[-1] if self.records else None
        if isinstance(last, Output) and last.task is attempt.task:
            last.texts.extend(texts)  # one log row per burst of output
        else:
            self.records.append(Output(attempt.task, texts))

    def _ended(self, attempt: Attempt, code: int | None, sig: int | None) -> None:
        """Its process is reaped: how it ended, unless its report decided that already."""
        if attempt.final is not None:
            self.ledger.ended(attempt)
            return
        ended = self._outcome(attempt, code, sig)
        delay = self._retry_delay(attempt, ended)
        self.ledger.ended(attempt, ended if delay is None
                          else Retry(attempt.task, ended.error or "", delay))

    def _on_message(self, attempt: Attempt, message: dict[str, Any]) -> bool:
        kind = message.get("kind")
        task = attempt.task
        if kind == "outcome":
            # The function has returned: write how it ended now, and claim for its slot,
            # while the process exits (a retry waits for the exit, to run on a free slot).
            first = attempt.report is None
            self.ledger.reported(attempt, message)
            if first and attempt.kill_reason is None:
                ended = self._outcome(attempt, message.get("exit_code"), None)
                if self._retry_delay(attempt, ended) is None:
                    attempt.decide(ended)
                    attempt.deadline = None  # it has finished: no time limit to enforce
            return True
        if kind == "error_exit":
            attempt.error_exit = True
            self.records.append(ErrorExit(task, clean_text(str(message.get("message"))),
                                          attempt.pid))
        elif kind == "info":
            self.records.append(Info(task, clean_text(str(message.get("message")))))
        elif kind == "related":
            self.records.append(Link(task.id, clean_text(str(message.get("link_kind"))),
                                     clean_text(str(message.get("key")))))
        return False

    def _outcome(self, attempt: Attempt, code: int | None, sig: int | None) -> Outcome:
        ended = decisions.outcome(attempt.task, killed_by=attempt.kill_reason,
                                  kill_status=attempt.kill_status, report=attempt.report,
                                  error_exit=attempt.error_exit, code=code, sig=sig)
        if ended.error is not None:
            ended = dataclasses.replace(ended, error=clean_text(ended.error))
        return ended

    def _retry_delay(self, attempt: Attempt, ended: Outcome) -> float | None:
        if (attempt.report or {}).get("refused"):
            return None  # this worker will not run it: no attempt would go otherwise
        raised = (attempt.report or {}).get("exception_types") or []
        return decisions.retry_delay(attempt.task, ended, error_exit=attempt.error_exit,
                                     raised=raised, default_backoff=self.policy.retry_backoff)

    # -- killing -----------------------------------------------------------------------

    def kill(self, attempt: Attempt, reason: str,
             status: TaskStatus = TaskStatus.TERMINATED) -> None:
        """SIGKILL the attempt's process group now (and again until it is reaped); the
        first reason given is the one recorded."""
        if attempt.phase not in ALIVE:
            return
        if attempt.kill_reason is None:
            attempt.kill_reason, attempt.kill_status = reason, status
        attempt.escalate_at = time.monotonic() + 1.0
        self.children.signal(attempt, signal.SIGKILL)

    def kill_all(self, reason: str) -> None:
        """The hard stop: every process now; the escalation repeats it until reaped."""
        self.drop_waiting(reason)
        for attempt in self.ledger.in_phase(*ALIVE):
            self.kill(attempt, reason)

    def terminate(self, attempt: Attempt, reason: str,
                  status: TaskStatus = TaskStatus.TERMINATED) -> None:
        """SIGTERM the child's process group now, SIGKILL it after the grace period."""
        if attempt.kill_reason is not None or attempt.phase not in ALIVE:
            return
        attempt.kill_reason, attempt.kill_status = reason, status
        attempt.escalate_at = time.monotonic() + self.policy.kill_grace
        self.children.signal(attempt, signal.SIGTERM)
        logger.info("terminating task", extra={"task_id": str(attempt.task.id),
                                               "pid": attempt.pid})

    def cancel(self, attempt: Attempt, requested_by: str) -> None:
        """Someone asked for the task's termination (its row says so)."""
        if attempt.phase is Phase.WAITING:  # claimed, not started: nothing to kill
            self.ledger.ended(attempt, Outcome(
                attempt.task.id, attempt.task.attempt, TaskStatus.TERMINATED,
                error=f"terminated by {requested_by or 'request'} before it started"))
        else:
            self.terminate(attempt, f"terminated by {requested_by or 'request'}")

    def tick(self, now: float) -> None:
        """What is due by the clock: escalating kills, time limits, the lease."""
        self.check_lease(now)
        for attempt in self.ledger.in_phase(*ALIVE, Phase.GONE):
            if attempt.escalate_at is not None and now >= attempt.escalate_at:
                if attempt.phase is not Phase.GONE:
                    self.children.signal(attempt, signal.SIGKILL)
                attempt.escalate_at = now + 1.0  # keep at it until the child is reaped
        for attempt in self.ledger.in_phase(*ALIVE):
            if attempt.deadline is not None and now >= attempt.deadline:
                attempt.deadline = None
                limit = attempt.task.timeout or self.policy.task_timeout
                self.terminate(attempt, f"timed out after {limit:g}s", TaskStatus.FAILED)

    def deadlines(self) -> list[float]:
        times = [] if self._lapse_noted else [self.lease_until]
        for attempt in self.ledger.in_phase(*ALIVE, Phase.GONE):
            times += [t for t in (attempt.escalate_at, attempt.deadline) if t is not None]
        return times

    # -- the lease ---------------------------------------------------------------------

    def renew_lease(self, sent_at: float) -> None:
        """Our lease holds until ``lease`` after the heartbeat sent at ``sent_at``, less a
        margin; the fork server kills our children at that moment unless renewed, even if
        the worker is stuck (a hung connection, SIGSTOP): by then they are being recovered
        by other workers, and must not run beside their second attempt."""
        lease = self.policy.lease
        self.lease_until = sent_at + lease - min(1.0, lease * 0.1)
        self._lapse_noted = False
        self.children.lease(self.lease_until)

    def lease_held(self, now: float) -> bool:
        """Our lease surely holds: only then may a task be claimed or started (after it
        lapsed, our claims may be recovered by others at any moment)."""
        return now < self.lease_until

    def check_lease(self, now: float) -> None:
        if now < self.lease_until or self._lapse_noted:
            return
        alive = self.ledger.in_phase(*ALIVE)
        if alive:
            logger.error("could not renew the lease in time: killing this worker's tasks",
                         extra={"running": len(alive)})
        for attempt in alive:  # killed by the fork server already; this says why
            if attempt.kill_reason is None:
                attempt.kill_reason, attempt.kill_status = LEASE_LAPSED, TaskStatus.FAILED
                attempt.escalate_at = now
        self._lapse_noted = True  # said once; the next heartbeat renews the lease
