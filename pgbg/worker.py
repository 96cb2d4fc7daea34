"""The worker: one parent process, one single-threaded loop, one child per task.

The worker decides; its children (``children.py``) run in processes a fork server forks
ahead of need (``forkserver.py``), and its SQL is ``workerdb.py``'s. Every attempt it
holds is one record in its ``Ledger`` (``attempts.py``), in one explicit phase, until
its process is over and the write that ends it is committed: reconnects, stops,
recovery and kills read that, so nothing the worker still holds is ever given back.

The loop waits (``selectors``) on the LISTEN connection, the fork server, every child's
pipes and exit, and a wake-up pipe for ``stop()``. It claims when woken by NOTIFY, when
a slot frees up, and on a slow poll, so a lost notification costs latency, never a task.
A lost connection is a mode of the same loop: children are still heard, their writes
wait, and the loop reconnects with backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import selectors
import signal
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from pgbg import children, db, decisions, notify
from pgbg.attempts import ALIVE, Attempt, Ledger, Phase, Retry
from pgbg.exceptions import DatabaseUnavailable, InvalidOption
from pgbg.models import TERMINAL_STATUSES, BackgroundTask, TaskStatus
from pgbg.queries import Outcome
from pgbg.storable import clean_text
from pgbg.workerdb import ErrorExit, Info, Link, Output, Record, ReleaseUnknown, WorkerDatabase

logger = logging.getLogger(__name__)
RETENTION_BATCH = 1000  # finished tasks purged per heartbeat when retention is set
TERMINAL = [s.value for s in TERMINAL_STATUSES]
PID_DELAY = 0.05  # seconds a recorded pid may wait for a commit to share
PERIODIC_RECHECK = 60.0  # seconds between looks at periodic tasks when none falls due sooner
WRITE_RETRY = 1.0  # seconds before writes the database refused or timed out are tried again
FORKSERVER_LOST = "the worker's fork server died while the task ran"
LEASE_LAPSED = ("killed: the worker could not renew its lease in time, so the task is "
                "recovered by another worker")
NOT_OURS = "the task is no longer this worker's"


class Worker:
    """Runs queued tasks, at most ``concurrency`` at a time, each in its own child process.

    ``run()`` loops until ``stop()``; ``run_once()`` is one step of that loop, for tests
    and for embedding in a loop of your own. Only the CLI installs signal handlers.
    """

    def __init__(self, concurrency: int = 1, *, poll_interval: float = 5.0,
                 heartbeat_interval: float = 5.0, lease: float = 30.0,
                 shutdown_timeout: float = 30.0, kill_grace: float = 5.0,
                 task_timeout: float | None = None, retention: float | None = None,
                 allow: list[str] | None = None, retry_backoff: float = 1.0,
                 output_limit: int = 1 << 20, listen: bool | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidOption(f"concurrency must be a positive int, not {concurrency!r}")
        if not 0 < heartbeat_interval < lease:
            raise InvalidOption("the heartbeat interval must be positive and shorter than the "
                                f"lease ({heartbeat_interval} vs {lease})")
        if task_timeout is not None and not task_timeout > 0:
            raise InvalidOption(f"task_timeout must be positive, not {task_timeout!r}")
        if retention is not None and not retention >= 0:
            raise InvalidOption(f"retention must not be negative, not {retention!r}")
        self.id = uuid.uuid4()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease
        self.shutdown_timeout = shutdown_timeout
        self.kill_grace = kill_grace
        self.task_timeout = task_timeout
        self.retention = retention  # seconds finished tasks are kept; None: kept for ever
        # Module prefixes whose functions this worker may run; None: any. A task outside
        # them fails without its module ever being imported.
        self.allow = tuple(allow) if allow is not None else None
        self.retry_backoff = retry_backoff  # first retry delay when the task sets none
        # Without LISTEN (poll-only, e.g. behind a transaction-pooling PgBouncer) every wake
        # comes from the poll: new tasks, cancel requests, due times.
        self.listen = db.listen_enabled() if listen is None else listen
        # The clock periodic tasks fall due by; None: the database's. Tests inject one.
        self.clock = clock
        self.hostname = socket.gethostname()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._db = WorkerDatabase(self.id, self.hostname, concurrency, self.listen,
                                  self._selector)
        # output_limit: bytes of each task's stdout/stderr kept in its log
        self._children = children.Children(self._selector, output_limit)
        self._ledger = Ledger()
        self._records: list[Record] = []  # in order; written before the outcomes
        self._pids_due = 0.0
        self._writes_due = 0.0  # after a refused or timed-out write: not before this
        self._want_claim = True
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_cancel_check = 0.0
        self._next_periodic = 0.0
        self._next_connect = 0.0
        self._connect_delay = 0.1
        self._lease_until = float("inf")  # monotonic: our lease surely holds until then
        self._stopping = False
        self._hard_stop_at: float | None = None
        self._killed_all = False
        self._started = False

    # -- public --------------------------------------------------------------------

    @property
    def running(self) -> int:
        return self._ledger.live()

    @property
    def forkserver_pid(self) -> int | None:
        return self._children.server_pid

    def stop(self, *, force: bool = False) -> None:
        """Stop claiming; let running tasks finish (``force``, or a second call: kill them).

        Safe to call from a signal handler: it only sets flags and writes one byte.
        """
        now = time.monotonic()
        self._hard_stop_at = now if (self._stopping or force) else now + self.shutdown_timeout
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        """Run until ``stop()``, every child is gone and what they left is written."""
        self.start()
        announced = False
        try:
            while not (self._stopping and self._finished()):
                self.run_once(timeout=None)
                if self._stopping and not announced:
                    announced = True
                    logger.info("worker stopping; waiting for running tasks",
                                extra={"worker_id": str(self.id), "running": self.running})
        finally:
            self.close()

    def start(self) -> None:
        if self._started:
            return
        _make_room_for_descriptors(self.concurrency)
        self._db.connect()
        self._db.register()
        self._renew_lease(time.monotonic())
        self._children.open(db.database_url())
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        self._started = True
        logger.info("worker started", extra={"worker_id": str(self.id),
                                             "concurrency": self.concurrency,
                                             "listen": self.listen})

    def run_once(self, timeout: float | None = 0.0) -> None:
        """One step: claim into free slots, wait for events up to ``timeout``, handle them."""
        self.start()
        now = time.monotonic()
        if not self._db.connected and now >= self._next_connect:
            self._try_connect()
        self._check_lease(now)
        if self._hard_stop_at is not None and now >= self._hard_stop_at and not self._killed_all:
            self._kill_all("the worker stopped before the task finished")
        if self._stopping:
            self._drop_waiting("the worker is stopping")  # another worker may start them
        self._escalate_kills(now)
        self._enforce_time_limits(now)
        if self._db.connected:
            if self._ledger.undecided() and now >= self._next_cancel_check:
                self._check_cancel_requests()
            if not self._stopping and now >= self._next_periodic:
                self._enqueue_periodic()
        self._sync()
        if self._db.pending_notifications():  # arrived during our queries
            self._on_notifications()
        for key, _mask in self._selector.select(self._wait_time(timeout)):
            if key.data == "db":
                self._on_notifications()
            else:
                self._on_process_event(key.data)
        self._sync()
        if self._db.connected and time.monotonic() >= self._next_heartbeat:
            self._heartbeat()

    def close(self) -> None:
        self._children.close()
        self._db.close()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        logger.info("worker stopped", extra={"worker_id": str(self.id)})

    # -- the loop's state ----------------------------------------------------------

    def _finished(self) -> bool:
        """Nothing left to run or write. Without the database the worker waits for it until
        the hard stop, then gives up what is left (its tasks are recovered after the
        lease) and says so."""
        if self._ledger.in_phase(Phase.WAITING, *ALIVE, Phase.GONE):
            return False
        if self._db.connected and not (self._records or self._ledger.pending_finals()):
            return True
        if not self._db.connected and self._hard_stop_at is not None \
                and time.monotonic() >= self._hard_stop_at:
            unwritten = len(self._records) + len(self._ledger.pending_finals())
            raise DatabaseUnavailable(
                f"stopping without the database: {unwritten} writes not made; "
                "the tasks are recovered after the lease")
        return False

    def _free_slots(self) -> int:
        return self.concurrency - self._ledger.slots_taken()

    def _wait_time(self, timeout: float | None) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat if self._db.connected else self._next_connect,
                     self._lease_until]
        for attempt in self._ledger.in_phase(*ALIVE, Phase.GONE):
            deadlines += [t for t in (attempt.escalate_at, attempt.deadline) if t is not None]
        if self._ledger.undecided():
            deadlines.append(self._next_cancel_check)
        if self._stopping:
            if self._hard_stop_at is not None:
                deadlines.append(self._hard_stop_at)
        elif self._db.connected:
            deadlines.append(self._next_periodic)
            if self._free_slots() > 0:
                if self._want_claim and now >= self._writes_due:
                    return 0.0
                deadlines.append(max(self._next_poll, self._writes_due))
        if self._records or self._ledger.pending_finals() or self._ledger.pids_to_write():
            deadlines.append(max(self._pids_due, self._writes_due))
        wait = max(0.0, min(deadlines) - now)
        return wait if timeout is None else min(wait, timeout)

    # -- writing and claiming ------------------------------------------------------

    def _sync(self) -> None:
        """Write what the loop collected and claim into free slots, if a claim is due, in
        one transaction; a pid alone waits up to PID_DELAY for a commit to share."""
        now = time.monotonic()
        if not self._db.connected or now < self._writes_due:
            return
        free = self._free_slots() if not self._stopping else 0
        claim = free > 0 and (self._want_claim or now >= self._next_poll)
        finals = self._ledger.pending_finals()
        pids = self._ledger.pids_to_write()
        if not (claim or self._records or finals or (pids and now >= self._pids_due)):
            return
        records, known = list(self._records), self._ledger.known_ids()
        try:
            step = self._db.step(records, finals, pids, free if claim else 0, known)
        except Exception as exc:  # no error may end the loop
            if not self._failed("a batch of writes", exc):
                self._write_one_by_one()
            if claim:
                self._next_poll, self._want_claim = time.monotonic() + self.poll_interval, False
            return
        del self._records[:len(records)]
        for attempt in pids:
            attempt.pid_written = True
        self._ledger.committed(finals)
        for task_id in step.unwritten:
            logger.warning("outcome not written: the task is no longer ours",
                           extra={"task_id": str(task_id)})
        if claim:
            now = time.monotonic()
            self._next_poll = now + self.poll_interval
            if step.next_due is not None:  # idle slots: claim again when it falls due
                self._next_poll = min(self._next_poll, now + max(step.next_due, 0.0) + 0.001)
            self._want_claim = len(step.claimed) == free  # a full batch: more may be waiting
            self._claimed(step.claimed)

    def _failed(self, what: str, exc: Exception) -> bool:
        """Handle an error of a database call; True if it is one to wait out (the connection
        is gone, or a timeout or lock), False if the database refused what was asked."""
        if isinstance(exc, psycopg.Error) and self._db.broken():
            self._lost_connection()
            return True
        self._writes_due = time.monotonic() + WRITE_RETRY
        if isinstance(exc, psycopg.OperationalError):  # a timeout, a lock: try again later
            logger.warning(f"{what} did not go through; trying again", exc_info=exc)
            return True
        logger.error(f"{what} was refused", exc_info=exc)
        return False

    def _write_one_by_one(self) -> None:
        """After a batch was refused: each write in its own transaction, so one bad write
        cannot hold back the rest. A refused record is dropped (logged); a refused outcome
        is replaced by one that says why it could not be stored, and written next time."""
        self._writes_due = 0.0
        known = self._ledger.known_ids()
        while self._records:
            try:
                self._db.write_record(self._records[0], known)
            except Exception as exc:
                if self._failed("a task's record", exc):
                    return
            del self._records[0]
        for attempt in self._ledger.pids_to_write():
            try:
                self._db.write_pid(attempt)
            except Exception as exc:
                if self._failed("a task's pid", exc):
                    return
            attempt.pid_written = True
        for attempt in self._ledger.pending_finals():
            try:
                self._db.write_final(attempt)
            except Exception as exc:
                if self._failed("a task's outcome", exc):
                    return
                attempt.final = _unstorable(attempt, exc)  # written on the next try
                continue
            self._ledger.committed([attempt])
        self._writes_due = 0.0

    def _enqueue_periodic(self) -> None:
        """Queue what periodic tasks are due; look again at the next due period, or sooner:
        a declared or changed one is announced by NOTIFY, but not without LISTEN."""
        recheck = PERIODIC_RECHECK if self.listen else self.poll_interval
        try:
            tick = self._db.enqueue_periodic(self.clock() if self.clock else None)
        except Exception as exc:
            self._failed("queueing periodic tasks", exc)
            self._next_periodic = time.monotonic() + recheck
            return
        if tick.queued:
            self._want_claim = True
        if tick.next_due is not None:
            recheck = min(recheck, (tick.next_due - tick.now).total_seconds())
        self._next_periodic = time.monotonic() + max(recheck, 0.0) + 0.001

    def _claimed(self, tasks: list[BackgroundTask]) -> None:
        for task in tasks:
            attempt = self._ledger.claimed(task)
            for older in self._ledger.older_alive(attempt):
                # Recovered from under us and claimed again: the old process must be gone
                # before the new one starts.
                self._kill(older, NOT_OURS)
            if not decisions.allowed(task.func, self.allow):
                self._ledger.ended(attempt, Outcome(
                    task.id, task.attempt, TaskStatus.FAILED,
                    error=f"not allowed: {task.func} is outside this worker's allowed "
                          f"modules ({', '.join(self.allow or ())})"))
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start claimed tasks while fewer than ``concurrency`` processes are alive: each is
        written straight into a spare child (and its pid recorded with the next write)."""
        for attempt in self._ledger.startable():
            if self._ledger.live() >= self.concurrency:
                return
            spare = self._children.start(attempt)
            if spare is None:
                return  # no spare yet: the fork server announces the next one shortly
            self._ledger.started(attempt, spare.pid, spare)
            limit = attempt.task.timeout or self.task_timeout
            if limit:
                attempt.deadline = time.monotonic() + limit
            if not self._ledger.pids_to_write()[1:]:
                self._pids_due = time.monotonic() + PID_DELAY

    def _drop_waiting(self, reason: str) -> None:
        """Give claimed tasks that never started back to the queue (the attempt is undone)."""
        waiting = self._ledger.in_phase(Phase.WAITING)
        if not waiting:
            return
        for attempt in waiting:
            logger.info("releasing a task that had not started", extra={
                "task_id": str(attempt.task.id), "status": reason})
            self._ledger.dropped(attempt)
        self._records.append(ReleaseUnknown())

    # -- children ------------------------------------------------------------------

    def _on_process_event(self, data: Any) -> None:
        """What the selector reported of the wake-up pipe, the fork server or a child."""
        if data == "wake":
            self._drain_wake_pipe()
            return
        self._check_lease(time.monotonic())
        for kind, attempt, value in self._children.handle(data):
            if kind == "message":
                self._on_child_message(attempt, value)
            elif kind == "output":
                self._on_output(attempt, [clean_text(text) for text in value])
            elif kind == "gone":
                self._ledger.gone(attempt)
                self._want_claim = True  # its slot is free
            elif kind == "exited":
                code = os.waitstatus_to_exitcode(value)  # negative: a signal
                self._ended(attempt, code if code >= 0 else None, -code if code < 0 else None)
            elif kind == "lost":
                self._ledger.ended(attempt, Outcome(attempt.task.id, attempt.task.attempt,
                                                    TaskStatus.FAILED, error=FORKSERVER_LOST))
        self._start_waiting()

    def _on_output(self, attempt: Attempt, texts: list[str]) -> None:
        last = self._records[-1] if self._records else None
        if isinstance(last, Output) and last.task is attempt.task:
            last.texts.extend(texts)  # one log row per burst of output
        else:
            self._records.append(Output(attempt.task, texts))

    def _ended(self, attempt: Attempt, code: int | None, sig: int | None) -> None:
        """Its process is reaped: how it ended, unless its report decided that already."""
        if attempt.final is not None:
            self._ledger.ended(attempt)
            return
        ended = self._outcome(attempt, code, sig)
        delay = self._retry_delay(attempt, ended)
        self._ledger.ended(attempt, ended if delay is None
                           else Retry(attempt.task, ended.error or "", delay))

    def _on_child_message(self, attempt: Attempt, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        task = attempt.task
        if kind == "outcome":
            # The function has returned: write how it ended now, and claim for its slot,
            # while the process exits (a retry waits for the exit, to run on a free slot).
            first = attempt.report is None
            self._ledger.reported(attempt, message)
            self._want_claim = True
            if first and attempt.kill_reason is None:
                ended = self._outcome(attempt, message.get("exit_code"), None)
                if self._retry_delay(attempt, ended) is None:
                    attempt.decide(ended)
                    attempt.deadline = None  # it has finished: no time limit to enforce
        elif kind == "error_exit":
            attempt.error_exit = True
            self._records.append(ErrorExit(task, clean_text(str(message.get("message"))),
                                           attempt.pid))
        elif kind == "info":
            self._records.append(Info(task, clean_text(str(message.get("message")))))
        elif kind == "related":
            self._records.append(Link(task.id, clean_text(str(message.get("link_kind"))),
                                      clean_text(str(message.get("key")))))

    def _outcome(self, attempt: Attempt, code: int | None, sig: int | None) -> Outcome:
        ended = decisions.outcome(attempt.task, killed_by=attempt.kill_reason,
                                  kill_status=attempt.kill_status, report=attempt.report,
                                  error_exit=attempt.error_exit, code=code, sig=sig)
        if ended.error is not None:
            ended = dataclasses.replace(ended, error=clean_text(ended.error))
        return ended

    def _retry_delay(self, attempt: Attempt, ended: Outcome) -> float | None:
        raised = (attempt.report or {}).get("exception_types") or []
        return decisions.retry_delay(attempt.task, ended, error_exit=attempt.error_exit,
                                     raised=raised, default_backoff=self.retry_backoff)

    # -- killing -------------------------------------------------------------------

    def _kill(self, attempt: Attempt, reason: str,
              status: TaskStatus = TaskStatus.TERMINATED) -> None:
        """SIGKILL the attempt's process group now (and again until it is reaped); the
        first reason given is the one recorded."""
        if attempt.phase not in ALIVE:
            return
        if attempt.kill_reason is None:
            attempt.kill_reason, attempt.kill_status = reason, status
        attempt.escalate_at = time.monotonic() + 1.0
        self._children.signal(attempt, signal.SIGKILL)

    def _kill_all(self, reason: str) -> None:
        """The hard stop: once, every process; the escalation repeats it until reaped."""
        self._killed_all = True
        self._drop_waiting(reason)
        for attempt in self._ledger.in_phase(*ALIVE):
            self._kill(attempt, reason)

    def _terminate(self, attempt: Attempt, reason: str,
                   status: TaskStatus = TaskStatus.TERMINATED) -> None:
        """SIGTERM the child's process group now, SIGKILL it after the grace period."""
        if attempt.kill_reason is not None or attempt.phase not in ALIVE:
            return
        attempt.kill_reason, attempt.kill_status = reason, status
        attempt.escalate_at = time.monotonic() + self.kill_grace
        self._children.signal(attempt, signal.SIGTERM)
        logger.info("terminating task", extra={"task_id": str(attempt.task.id),
                                               "pid": attempt.pid})

    def _enforce_time_limits(self, now: float) -> None:
        for attempt in self._ledger.in_phase(*ALIVE):
            if attempt.deadline is not None and now >= attempt.deadline:
                attempt.deadline = None
                limit = attempt.task.timeout or self.task_timeout
                self._terminate(attempt, f"timed out after {limit:g}s", TaskStatus.FAILED)

    def _escalate_kills(self, now: float) -> None:
        for attempt in self._ledger.in_phase(*ALIVE, Phase.GONE):
            if attempt.escalate_at is not None and now >= attempt.escalate_at:
                if attempt.phase is not Phase.GONE:
                    self._children.signal(attempt, signal.SIGKILL)
                attempt.escalate_at = now + 1.0  # keep at it until the child is reaped

    def _check_cancel_requests(self) -> None:
        """Terminate the children whose rows ask for it: the row, not a NOTIFY, decides."""
        self._next_cancel_check = time.monotonic() + self.poll_interval
        by_task = {a.task.id: a for a in self._ledger.undecided()
                   if a.phase in (Phase.WAITING, *ALIVE)}
        if not by_task:
            return
        try:
            requested = self._db.cancel_requested(list(by_task))
        except Exception as exc:
            self._failed("the look at cancel requests", exc)
            return
        for task_id, requested_by in requested:
            attempt = by_task[task_id]
            if attempt.phase is Phase.WAITING:  # claimed, not started: nothing to kill
                self._ledger.ended(attempt, Outcome(
                    task_id, attempt.task.attempt, TaskStatus.TERMINATED,
                    error=f"terminated by {requested_by or 'request'} before it started"))
            else:
                self._terminate(attempt, f"terminated by {requested_by or 'request'}")

    # -- the lease ------------------------------------------------------------------

    def _renew_lease(self, sent_at: float) -> None:
        """Our lease holds until ``lease`` after the heartbeat sent at ``sent_at``, less a
        margin; the fork server kills our children at that moment unless renewed, even if
        this process is stuck (a hung connection, SIGSTOP): by then they are being
        recovered by other workers, and must not run beside their second attempt."""
        self._lease_until = sent_at + self.lease - min(1.0, self.lease * 0.1)
        self._children.lease(self._lease_until)

    def _check_lease(self, now: float) -> None:
        if now < self._lease_until:
            return
        alive = self._ledger.in_phase(*ALIVE)
        if alive:
            logger.error("could not renew the lease in time: killing this worker's tasks",
                         extra={"worker_id": str(self.id), "running": len(alive)})
        for attempt in alive:  # killed by the fork server already; this says why
            if attempt.kill_reason is None:
                attempt.kill_reason, attempt.kill_status = LEASE_LAPSED, TaskStatus.FAILED
                attempt.escalate_at = now
        self._lease_until = float("inf")  # said once; the next heartbeat renews it

    # -- the database ----------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew the lease, drop what is no longer ours, release claims we do not hold
        (one whose commit outlived its connection), recover the lost."""
        sent_at = time.monotonic()
        self._next_heartbeat = sent_at + self.heartbeat_interval
        try:
            if not self._db.heartbeat():
                logger.warning("this worker had been presumed dead; registered again",
                               extra={"worker_id": str(self.id)})
            self._renew_lease(sent_at)
            self._drop_not_ours()
            self._db.release_unknown(self._ledger.known_ids())
            self._db.recover_lost(self.lease)
            if self.retention is not None:  # one bounded batch per heartbeat
                self._db.purge(self.retention, TERMINAL, RETENTION_BATCH)
        except Exception as exc:
            self._failed("the heartbeat", exc)

    def _drop_not_ours(self) -> None:
        """Attempts whose row has moved on (recovered elsewhere after our lease lapsed):
        a claim is forgotten, a process killed so that the task never runs twice."""
        # A task that recorded its own failure is no longer 'running', yet still ours.
        undecided = [a for a in self._ledger.undecided()
                     if a.phase in (Phase.WAITING, *ALIVE) and not a.error_exit]
        if not undecided:
            return
        owned = self._db.owned(undecided)
        for attempt in undecided:
            if attempt.task.id in owned:
                continue
            if attempt.phase is Phase.WAITING:
                self._ledger.dropped(attempt)
            else:
                self._kill(attempt, NOT_OURS)

    def _on_notifications(self) -> None:
        try:
            notes = self._db.notifications()
        except Exception as exc:
            self._failed("reading notifications", exc)
            return
        if any(n.channel == notify.QUEUED for n in notes):
            self._want_claim = True
        if any(n.channel == notify.PERIODIC for n in notes):
            self._next_periodic = 0.0
        if any(n.channel == notify.CANCEL and self._ledger.by_id(n.payload) for n in notes):
            self._check_cancel_requests()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _lost_connection(self) -> None:
        self._db.disconnect()
        self._next_connect = 0.0
        self._connect_delay = 0.1

    def _try_connect(self) -> None:
        """Reconnect; then make sure the old backend is gone, give back any claim we do not
        hold, and rescan, so nothing that happened meanwhile is missed."""
        try:
            self._db.connect()
        except DatabaseUnavailable:
            logger.warning("database unavailable; retrying", extra={"delay": self._connect_delay})
            self._next_connect = time.monotonic() + self._connect_delay
            self._connect_delay = min(self._connect_delay * 2, 5.0)
            return
        except psycopg.Error:
            self._next_connect = time.monotonic() + self._connect_delay
            return
        self._want_claim = True
        self._next_heartbeat = self._next_cancel_check = self._writes_due = 0.0
        try:
            self._db.fence_old_backend()
            self._db.release_unknown(self._ledger.known_ids())
        except Exception as exc:  # the heartbeat releases them later
            self._failed("the release after reconnecting", exc)


def _unstorable(attempt: Attempt, exc: Exception) -> Outcome:
    """An outcome the database can store in place of one it refused."""
    task = attempt.task
    reason = clean_text(str(exc).strip().splitlines()[0] if str(exc).strip()
                        else type(exc).__name__)
    final = attempt.final
    code = final.exit_code if isinstance(final, Outcome) else None
    return Outcome(task.id, task.attempt, TaskStatus.FAILED, exit_code=code,
                   error=f"the task's outcome could not be stored: {reason}",
                   error_exit_recorded=attempt.error_exit)


def _make_room_for_descriptors(concurrency: int) -> None:
    """Raise the soft limit on open files to what ``concurrency`` children need (each
    holds three descriptors here, a spare four, and the fork server inherits the limit),
    never above the hard limit and never lower than it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8 * concurrency + 128
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        logger.warning("the open-file limit may be too low for this concurrency",
                       extra={"concurrency": concurrency, "limit": hard})
        want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
