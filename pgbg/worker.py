"""The worker: one parent process, one single-threaded loop, one child per task.

The worker decides; its children (``children.py``) run in processes a fork server forks
ahead of need (``forkserver.py``), and its SQL is ``workerdb.py``'s. Every attempt it
holds is one record in its ``Ledger`` (``attempts.py``), in one explicit phase, until
its process is over and the write that ends it is committed: reconnects, stops,
recovery and kills read that, so nothing the worker still holds is ever given back.

The loop waits (``selectors``) on the LISTEN connection, the fork server, every child's
pipes and exit, and a wake-up pipe for ``stop()``. It claims when woken by NOTIFY (only
the worker on duty hears of new tasks, ``duty.py``), when a slot frees up, and on a slow
poll, so a lost notification costs latency, never a task.
A lost connection is a mode of the same loop: children are still heard, their writes
wait, and the loop reconnects with backoff.
"""

from __future__ import annotations

import logging
import os
import resource
import selectors
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from pgbg import children, db, notify
from pgbg.allowlist import dotted
from pgbg.attempts import ALIVE, Phase
from pgbg.duty import Duty
from pgbg.exceptions import DatabaseUnavailable, InvalidOption
from pgbg.models import TERMINAL_STATUSES
from pgbg.supervisor import NOT_OURS, Policy, Supervisor
from pgbg.workerdb import WorkerDatabase

logger = logging.getLogger(__name__)
RETENTION_BATCH = 1000  # finished tasks purged per heartbeat when retention is set
TERMINAL = [s.value for s in TERMINAL_STATUSES]
PERIODIC_RECHECK = 60.0  # seconds between looks at periodic tasks when none falls due sooner


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
                 clock: Callable[[], datetime] | None = None,
                 registered_only: bool = False, imports: Sequence[str] = ()) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidOption(f"concurrency must be a positive int, not {concurrency!r}")
        if not 0 < heartbeat_interval < lease:
            raise InvalidOption("the heartbeat interval must be positive and shorter than the "
                                f"lease ({heartbeat_interval} vs {lease})")
        if task_timeout is not None and not task_timeout > 0:
            raise InvalidOption(f"task_timeout must be positive, not {task_timeout!r}")
        if retention is not None and not retention >= 0:
            raise InvalidOption(f"retention must not be negative, not {retention!r}")
        imports = tuple(imports)
        for module in imports:
            if not isinstance(module, str) or not module or not dotted(module):
                raise InvalidOption(f"imports: {module!r} is not a module name")
        if registered_only and not imports:
            raise InvalidOption("registered_only runs only the @pgbg.task functions of the "
                                "modules the worker imports: name them (--import MODULE)")
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
        # registered_only: only @pgbg.task functions of ``imports`` run; any other name
        # fails without being imported. ``imports`` are imported by the fork server before
        # it forks (a failure stops the worker at its start).
        self.registered_only = registered_only
        self.imports = imports
        self._children = children.Children(self._selector, output_limit, self.allow,
                                           registered_only, imports)
        self._sup = Supervisor(Policy(concurrency, kill_grace, task_timeout, retry_backoff,
                                      self.allow, lease), self._children)
        self._ledger = self._sup.ledger
        self._records = self._sup.records  # in order; written before the outcomes
        self._want_claim = True
        self._duty = Duty()  # whether this worker is the one that hears of new tasks
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_cancel_check = 0.0
        self._next_periodic = 0.0
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
        self._sup.renew_lease(time.monotonic())
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
        if not self._db.connected and now >= self._db.next_connect:
            self._try_connect()
        if self._hard_stop_at is not None and now >= self._hard_stop_at and not self._killed_all:
            self._killed_all = True
            self._sup.kill_all("the worker stopped before the task finished")
        if self._stopping:
            self._sup.drop_waiting("the worker is stopping")  # another worker may start them
        self._sup.tick(now)
        if self._db.connected and now >= self._db.retry_at:  # not while a write waits out a lock
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
            elif key.data == "wake":
                self._drain_wake_pipe()
            elif self._sup.handle(key.data):
                self._want_claim = True  # a slot may be free
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

    def _can_claim(self) -> bool:
        return not self._stopping and self._free_slots() > 0 \
            and self._sup.lease_held(time.monotonic())

    def _wait_time(self, timeout: float | None) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat if self._db.connected else self._db.next_connect,
                     *self._sup.deadlines()]
        if self._ledger.undecided():
            deadlines.append(self._next_cancel_check)
        if self._stopping:
            if self._hard_stop_at is not None:
                deadlines.append(self._hard_stop_at)
        elif self._db.connected:
            deadlines.append(self._next_periodic)
            if self._free_slots() > 0:
                if self._want_claim and now >= self._db.retry_at:
                    return 0.0
                deadlines.append(max(self._next_poll, self._db.retry_at))
        if self._records or self._ledger.pending_finals() or self._ledger.pids_to_write():
            deadlines.append(max(self._sup.pids_due, self._db.retry_at))
        wait = max(0.0, min(deadlines) - now)
        return wait if timeout is None else min(wait, timeout)

    # -- writing and claiming ------------------------------------------------------

    def _sync(self) -> None:
        """Write what the loop collected and claim into free slots, if a claim is due, in
        one transaction; a pid alone waits up to PID_DELAY for a commit to share."""
        now = time.monotonic()
        if not self._db.connected or now < self._db.retry_at:
            return
        self._tend_duty()
        free = self._free_slots() if not self._stopping else 0
        claim = free > 0 and self._sup.lease_held(now) and (
            self._want_claim or now >= self._next_poll)
        finals = self._ledger.pending_finals()
        pids = self._ledger.pids_to_write()
        if not (claim or self._records or finals or (pids and now >= self._sup.pids_due)):
            return
        answering = claim and self._duty.claiming()
        step = self._db.write(self._records, finals, pids, free if claim else 0, self._ledger)
        if step is None:  # nothing committed, or written item by item without the claim
            if claim:
                self._next_poll, self._want_claim = time.monotonic() + self.poll_interval, False
                self._duty.heard |= answering  # not answered yet
            return
        if claim:
            now = time.monotonic()
            self._next_poll = now + self.poll_interval
            if step.next_due is not None:  # idle slots: claim again when it falls due
                self._next_poll = min(self._next_poll, now + max(step.next_due, 0.0) + 0.001)
            # a full batch: more may be waiting
            self._want_claim = len(step.claimed) + len(step.unreadable) == free
            self._sup.claimed(step.claimed, step.unreadable)
            self._duty.claimed(answering, full=self._want_claim)
            self._tend_duty()

    def _tend_duty(self) -> None:
        """Hand the duty on, or take it, as ``duty.py`` says (only with LISTEN)."""
        if not self.listen or not self._db.connected:
            return
        duty, now = self._duty, time.monotonic()
        try:
            if duty.should_release(self._stopping):
                self._db.duty_release()
                duty.released()
            elif duty.should_take(self._can_claim(), now):
                won = self._db.duty_take()
                duty.taken(won, now, self.poll_interval)
                if won:  # what was queued while nobody listened
                    self._want_claim = True
        except Exception as exc:
            self._db.failed("the duty's hand-over", exc)

    def _enqueue_periodic(self) -> None:
        """Queue what periodic tasks are due; look again at the next due period, or sooner:
        a declared or changed one is announced by NOTIFY, but not without LISTEN."""
        recheck = PERIODIC_RECHECK if self.listen else self.poll_interval
        try:
            tick = self._db.enqueue_periodic(self.clock() if self.clock else None)
        except Exception as exc:
            self._db.failed("queueing periodic tasks", exc)
            self._next_periodic = time.monotonic() + recheck
            return
        if tick.queued:
            self._want_claim = True
        if tick.next_due is not None:
            recheck = min(recheck, (tick.next_due - tick.now).total_seconds())
        self._next_periodic = time.monotonic() + max(recheck, 0.0) + 0.001

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
            self._db.failed("the look at cancel requests", exc)
            return
        for task_id, requested_by in requested:
            self._sup.cancel(by_task[task_id], requested_by)

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
            self._sup.renew_lease(sent_at)
            self._duty.heartbeat()
            self._drop_not_ours()
            self._sup.start_waiting()  # what waited for the lease (and is still ours)
            self._db.release_unknown(self._ledger.known_ids())
            self._db.recover_lost(self.lease)
            if self.retention is not None:  # one bounded batch per heartbeat
                self._db.purge(self.retention, TERMINAL, RETENTION_BATCH)
        except Exception as exc:
            self._db.failed("the heartbeat", exc)

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
                self._sup.kill(attempt, NOT_OURS)

    def _on_notifications(self) -> None:
        try:
            notes = self._db.notifications()
        except Exception as exc:
            self._db.failed("reading notifications", exc)
            return
        if any(n.channel == notify.QUEUED for n in notes) \
                and self._duty.queued(self._can_claim()):
            self._want_claim = True
        if any(n.channel == notify.DUTY for n in notes):
            self._duty.freed(self._can_claim())
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

    def _try_connect(self) -> None:
        """Reconnect; then make sure the old backend is gone, give back any claim we do not
        hold, and rescan, so nothing that happened meanwhile is missed."""
        if not self._db.reconnect():
            return
        self._want_claim = True
        held = self._duty.lost()  # the new connection LISTENs to nothing new until it takes it
        self._next_heartbeat = self._next_cancel_check = 0.0
        try:
            self._db.fence_old_backend()  # the old backend's lock is gone with it, if not before
            if held:  # the others hear it, not only at their heartbeat
                self._db.duty_freed()
            self._db.release_unknown(self._ledger.known_ids())
        except Exception as exc:  # the heartbeat releases them later
            self._db.failed("the release after reconnecting", exc)


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
