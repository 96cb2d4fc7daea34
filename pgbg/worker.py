"""The worker: one parent process, one single-threaded loop, one child per task.

The worker holds the database connection and decides; its children (``children.py``)
run in processes a fork server forks ahead of need (``forkserver.py``), because forking
from a process that has loaded the database driver is several times slower. The loop
waits (``selectors``) on the LISTEN connection, the fork server, every child's pipes and
exit, and a wake-up pipe for ``stop()``. It claims
when woken by NOTIFY, when a slot frees up, and on a slow poll, so a lost notification
costs latency, never a task. Every database write of the loop goes through one ordered
queue, kept across reconnects, so nothing a task reported is lost while the database is
away.
"""

from __future__ import annotations

import contextlib
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

from pgbg import children, db, decisions, notify, periodic, queries
from pgbg.children import Child
from pgbg.exceptions import DatabaseUnavailable, InvalidOption
from pgbg.models import TERMINAL_STATUSES, BackgroundTask, TaskStatus
from pgbg.queries import Outcome

logger = logging.getLogger(__name__)
RETENTION_BATCH = 1000  # finished tasks purged per heartbeat when retention is set
TERMINAL = [s.value for s in TERMINAL_STATUSES]
PID_DELAY = 0.05  # seconds a recorded pid may wait for a commit to share
PERIODIC_RECHECK = 60.0  # seconds between looks at periodic tasks when none falls due sooner
FORKSERVER_LOST = "the worker's fork server died while the task ran"


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
        self._conn: psycopg.Connection[Any] | None = None
        self._inbox: notify.Inbox | None = None
        self._conn_fd = -1  # as registered with the selector (a broken conn cannot say)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        # output_limit: bytes of each task's stdout/stderr kept in its log
        self._children = children.Children(self._selector, output_limit, self.allow)
        # Claimed as a running child reported its outcome, started once that child has
        # exited: the claim's round trip overlaps the child's exit instead of following it.
        self._ready: list[Child] = []
        self._writes: list[tuple[str, Any]] = []  # in order; outcomes and pids batch up
        self._pids_due = 0.0
        self._want_claim = True
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_cancel_check = 0.0
        self._next_periodic = 0.0
        self._stopping = False
        self._hard_stop_at: float | None = None
        self._started = False

    # -- public --------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._children.running)

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
        """Run until ``stop()`` and every child is gone."""
        self.start()
        announced = False
        try:
            while not (self._stopping and not self._children.running and not self._ready):
                self.run_once(timeout=None)
                if self._stopping and not announced:
                    announced = True
                    logger.info("worker stopping; waiting for running tasks",
                                extra={"worker_id": str(self.id), "running": self.running})
            self._sync()
        finally:
            self.close()

    def start(self) -> None:
        if self._started:
            return
        _make_room_for_descriptors(self.concurrency)
        self._connect()
        assert self._conn is not None
        queries.worker_register(self._conn, self.id, self.hostname, os.getpid(), self.concurrency)
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
        if self._hard_stop_at is not None and now >= self._hard_stop_at:
            self._kill_all("the worker stopped before the task finished")
        if self._stopping and self._ready:  # another worker may start them now
            self._drop_ready("the worker is stopping")
        self._escalate_kills(now)
        self._enforce_time_limits(now)
        if (self._children.running or self._ready) and now >= self._next_cancel_check:
            self._check_cancel_requests()
        if not self._stopping and now >= self._next_periodic:
            self._enqueue_periodic()
        self._sync()
        if self._inbox is not None and self._inbox.pending:  # arrived during our queries
            self._on_notifications()
        for key, _mask in self._selector.select(self._wait_time(timeout)):
            if key.data == "db":
                self._on_notifications()
            else:
                self._on_process_event(key.data)
        self._sync()
        if time.monotonic() >= self._next_heartbeat:
            self._heartbeat()

    def close(self) -> None:
        self._children.close()
        if self._conn is not None and not self._conn.closed:
            try:
                queries.worker_unregister(self._conn, self.id)
            except psycopg.Error:
                logger.warning("could not unregister the worker", extra={"worker_id": str(self.id)})
            self._conn.close()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        logger.info("worker stopped", extra={"worker_id": str(self.id)})

    # -- claiming ------------------------------------------------------------------

    def _free_slots(self) -> int:
        """Slots to claim for: a child that reported its outcome is as good as gone."""
        busy = sum(1 for c in self._children.running.values() if c.report is None and not c.gone)
        return self.concurrency - busy - len(self._ready)

    def _wait_time(self, timeout: float | None) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat]
        for c in self._children.running.values():
            deadlines += [t for t in (c.kill_at, c.deadline) if t is not None]
        if self._children.running or self._ready:
            deadlines.append(self._next_cancel_check)
        if self._stopping:
            if self._hard_stop_at is not None:
                deadlines.append(self._hard_stop_at)
        else:
            deadlines.append(self._next_periodic)
            if self._free_slots():
                if self._want_claim:
                    return 0.0
                deadlines.append(self._next_poll)
        if self._writes:
            deadlines.append(self._pids_due)  # pids waiting to ride along; or a retry
        wait = max(0.0, min(deadlines) - now)
        return wait if timeout is None else min(wait, timeout)

    def _sync(self) -> None:
        """Write what the loop collected and claim into free slots, if a claim is due, in
        one statement (``pgbg.task_step``) and so one commit; progress records, if any,
        go first in the same transaction."""
        now = time.monotonic()
        free = self._free_slots() if not self._stopping else 0
        claim = free > 0 and (self._want_claim or now >= self._next_poll)
        # A pid alone is not worth a commit of its own: it rides with the next outcome or
        # claim, or goes on its own after PID_DELAY.
        urgent = any(kind != "pid" for kind, _item in self._writes) or (
            self._writes and now >= self._pids_due)
        if not (urgent or claim):
            return
        conn = self._conn
        assert conn is not None
        pids = [item for kind, item in self._writes if kind == "pid"]
        outcomes = [item for kind, item in self._writes if kind == "outcome"]
        records = [(kind, item) for kind, item in self._writes if kind not in ("pid", "outcome")]
        try:
            with conn.transaction() if records else contextlib.nullcontext():
                for kind, item in records:  # before the outcomes of the same tasks
                    self._write(kind, item)
                step = queries.task_step(conn, self.id, self.hostname,
                                         free if claim else 0, pids, outcomes)
        except psycopg.OperationalError:
            self._pids_due = time.monotonic() + 1.0
            self._reconnect()  # nothing was committed: the writes are kept for later
            return
        except psycopg.Error:
            logger.exception("a batch of writes failed; writing them one by one")
            self._write_one_by_one()
            return
        self._writes.clear()
        for task_id in step.unwritten:
            logger.warning("outcome not written: the task is no longer ours",
                           extra={"task_id": str(task_id)})
        if claim:
            now = time.monotonic()
            self._next_poll = now + self.poll_interval
            if step.next_due is not None:  # idle slots: claim again when it falls due
                self._next_poll = min(self._next_poll, now + max(step.next_due, 0.0) + 0.001)
            self._want_claim = len(step.claimed) == free  # a full batch: more may be waiting
            self._start(step.claimed)

    def _enqueue_periodic(self) -> None:
        """Queue what periodic tasks are due; look again at the next due period, or sooner:
        a declared or changed one is announced by NOTIFY, but not without LISTEN."""
        assert self._conn is not None
        recheck = PERIODIC_RECHECK if self.listen else self.poll_interval
        try:
            tick = periodic.enqueue_due(self._conn, self.clock() if self.clock else None)
        except psycopg.OperationalError:
            self._reconnect()
            return
        except psycopg.Error:
            logger.exception("could not queue periodic tasks")
            self._next_periodic = time.monotonic() + recheck
            return
        if tick.queued:
            self._want_claim = True
        if tick.next_due is not None:
            recheck = min(recheck, (tick.next_due - tick.now).total_seconds())
        self._next_periodic = time.monotonic() + max(recheck, 0.0) + 0.001

    def _start(self, tasks: list[BackgroundTask]) -> None:
        for task in tasks:
            if not decisions.allowed(task.func, self.allow):
                self._writes.append(("outcome", Outcome(
                    task.id, task.attempt, TaskStatus.FAILED,
                    error=f"not allowed: {task.func} is outside this worker's allowed "
                          f"modules ({', '.join(self.allow or ())})")))
                continue
            self._ready.append(Child(task))
        self._send_ready()

    def _send_ready(self) -> None:
        """Start claimed tasks while fewer than ``concurrency`` children are alive: each is
        written straight into a spare child (and its pid recorded with the next write)."""
        while self._ready and self._children.live() < self.concurrency:
            running = self._ready[0]
            if not self._children.start(running):
                return  # no spare yet: the fork server announces the next one shortly
            self._ready.pop(0)
            task = running.task
            limit = task.timeout or self.task_timeout
            if limit:
                running.deadline = time.monotonic() + limit
            if not self._writes:
                self._pids_due = time.monotonic() + PID_DELAY
            self._writes.append(("pid", (task.id, task.attempt, running.pid)))

    def _drop_ready(self, reason: str) -> None:
        """Give claimed tasks that never started back to the queue (the attempt is undone)."""
        if not self._ready:
            return
        for running in self._ready:
            logger.info("releasing a task that had not started", extra={
                "task_id": str(running.task.id), "status": reason})
        self._ready.clear()
        self._writes.append(("release", None))

    # -- children ------------------------------------------------------------------

    def _on_process_event(self, data: Any) -> None:
        """What the selector reported of the wake-up pipe, the fork server or a child."""
        if data == "wake":
            self._drain_wake_pipe()
            return
        for kind, running, value in self._children.handle(data):
            if kind == "message":
                self._on_child_message(running, value)
            elif kind == "output":
                last = self._writes[-1] if self._writes else None
                if last and last[0] == "output" and last[1][0] is running.task:
                    last[1][1].extend(value)  # one log row per burst of output
                else:
                    self._writes.append(("output", (running.task, value)))
            elif kind == "gone":
                self._want_claim = True  # its slot is free
            elif kind == "exited":
                self._on_exit(running, value)
            elif kind == "lost" and not running.written:
                self._writes.append(("outcome", Outcome(
                    running.task.id, running.task.attempt, TaskStatus.FAILED,
                    error=FORKSERVER_LOST)))
        self._send_ready()

    def _on_exit(self, running: Child, status: int) -> None:
        """Record how the task ended, unless its report did."""
        if running.written:
            return
        code = os.waitstatus_to_exitcode(status)  # negative: a signal
        outcome = _outcome(running, code if code >= 0 else None, -code if code < 0 else None)
        delay = self._retry_delay(running, outcome)
        if delay is None:
            self._writes.append(("outcome", outcome))
        else:
            self._writes.append(("retry", (running.task, outcome.error or "", delay)))

    def _on_child_message(self, running: Child, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "outcome":
            # The function has returned: write how it ended now, and claim for its slot,
            # while the process exits (a retry waits for the exit, to run on a free slot).
            running.report = message
            self._want_claim = True
            if running.killed_by_worker is None:
                outcome = _outcome(running, message.get("exit_code"), None)
                if self._retry_delay(running, outcome) is None:
                    self._writes.append(("outcome", outcome))
                    running.written = True
                    running.deadline = None  # it has finished: no time limit to enforce
        elif kind == "error_exit":
            running.error_exit = True
            self._writes.append(("error_exit", (running.task, message["message"])))
        elif kind == "info":
            self._writes.append(("info", (running.task, message["message"])))
        elif kind == "related":
            self._writes.append(("related", (running.task.id, message["link_kind"],
                                             message["key"])))

    def _retry_delay(self, running: Child, ended: Outcome) -> float | None:
        raised = (running.report or {}).get("exception_types") or []
        return decisions.retry_delay(running.task, ended, error_exit=running.error_exit,
                                     raised=raised, default_backoff=self.retry_backoff)

    # -- killing -------------------------------------------------------------------

    def _signal(self, running: Child, sig: signal.Signals) -> None:
        self._children.signal(running, int(sig))

    def _kill_all(self, reason: str) -> None:
        self._drop_ready(reason)
        for running in self._children.running.values():
            if running.kill_at is None or running.killed_by_worker is None:
                running.killed_by_worker = running.killed_by_worker or reason
                running.kill_at = time.monotonic()
                self._signal(running, signal.SIGKILL)

    def _terminate(self, running: Child, reason: str,
                   status: TaskStatus = TaskStatus.TERMINATED) -> None:
        """SIGTERM the child's process group now, SIGKILL it after the grace period."""
        if running.killed_by_worker is not None:
            return
        running.killed_by_worker = reason
        running.kill_status = status
        running.kill_at = time.monotonic() + self.kill_grace
        self._signal(running, signal.SIGTERM)
        logger.info("terminating task", extra={"task_id": str(running.task.id),
                                               "pid": running.pid})

    def _enforce_time_limits(self, now: float) -> None:
        for running in self._children.running.values():
            if running.deadline is not None and now >= running.deadline:
                running.deadline = None
                limit = running.task.timeout or self.task_timeout
                self._terminate(running, f"timed out after {limit:g}s", TaskStatus.FAILED)

    def _escalate_kills(self, now: float) -> None:
        for running in self._children.running.values():
            if running.kill_at is not None and now >= running.kill_at:
                self._signal(running, signal.SIGKILL)
                running.kill_at = now + 1.0  # keep at it until the child is reaped

    def _check_cancel_requests(self) -> None:
        """Terminate the children whose rows ask for it: the row, not a NOTIFY, decides."""
        self._next_cancel_check = time.monotonic() + self.poll_interval
        by_task = {c.task.id: c for c in [*self._children.running.values(), *self._ready]}
        if not by_task:
            return
        try:
            assert self._conn is not None
            requested = queries.task_list_cancel_requested(self._conn, self.id, list(by_task))
        except psycopg.OperationalError:
            self._reconnect()
            return
        for task_id, requested_by in requested:
            running = by_task[task_id]
            if running in self._ready:  # claimed, not started: nothing to kill
                self._ready.remove(running)
                self._writes.append(("outcome", Outcome(
                    task_id, running.task.attempt, TaskStatus.TERMINATED,
                    error=f"terminated by {requested_by or 'request'} before it started")))
            else:
                self._terminate(running, f"terminated by {requested_by or 'request'}")

    # -- the database ----------------------------------------------------------------

    def _on_notifications(self) -> None:
        try:
            assert self._inbox is not None
            notes = self._inbox.take()
        except psycopg.OperationalError:
            self._reconnect()
            return
        if any(n.channel == notify.QUEUED for n in notes):
            self._want_claim = True
        if any(n.channel == notify.PERIODIC for n in notes):
            self._next_periodic = 0.0
        ours = {*self._children.running, *(str(c.task.id) for c in self._ready)}
        if any(n.channel == notify.CANCEL and n.payload in ours for n in notes):
            self._check_cancel_requests()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _write_one_by_one(self) -> None:
        """After a batch failed for a reason other than the connection: each write in its
        own transaction, so one bad write (logged and dropped) cannot stall the rest."""
        assert self._conn is not None
        while self._writes:
            kind, item = self._writes[0]
            try:
                with self._conn.transaction():
                    if kind == "pid":
                        queries.task_step(self._conn, self.id, self.hostname, 0, [item], [])
                    elif kind == "outcome":
                        queries.task_step(self._conn, self.id, self.hostname, 0, [], [item])
                    else:
                        self._write(kind, item)
            except psycopg.OperationalError:
                self._reconnect()
                return
            except psycopg.Error:
                logger.exception("dropped a write the database refused",
                                 extra={"status": kind})
            del self._writes[0]

    def _write(self, kind: str, item: Any) -> None:
        """One record of a task: info, its own failure, a link, output, a retry, or its
        release back to the queue."""
        assert self._conn is not None
        if kind == "info":
            queries.task_record_info(self._conn, *item)
        elif kind == "error_exit":
            queries.task_record_error_exit(self._conn, *item)
        elif kind == "related":
            queries.task_link_insert(self._conn, *item)
        elif kind == "retry":
            queries.task_retry_later(self._conn, self.id, *item)
        elif kind == "release":  # every claim of ours that is not a child by now
            queries.task_release_unstarted(
                self._conn, self.id, [c.task.id for c in self._children.running.values()])
        elif kind == "output":
            task, texts = item
            queries.task_log_insert(self._conn, task.id, "output", "".join(texts))

    def _heartbeat(self) -> None:
        """Renew the lease, drop children whose tasks are no longer ours, recover the lost."""
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        conn = self._conn
        assert conn is not None
        try:
            if not queries.worker_heartbeat(conn, self.id, self.hostname, os.getpid(),
                                            self.concurrency):
                logger.warning("this worker had been presumed dead; registered again",
                               extra={"worker_id": str(self.id)})
            if self._ready:
                attempts = [(c.task.id, c.task.attempt) for c in self._ready]
                owned = queries.task_list_owned(conn, self.id, attempts)
                self._ready = [c for c in self._ready if c.task.id in owned]
            live = [c for c in self._children.running.values() if not c.written]
            if live:
                owned = queries.task_list_owned(conn, self.id,
                                                [(c.task.id, c.task.attempt) for c in live])
                for running in live:
                    if running.task.id not in owned and running.killed_by_worker is None:
                        # Recovered elsewhere after our lease lapsed: it must not run twice.
                        running.killed_by_worker = "the task is no longer this worker's"
                        running.kill_at = time.monotonic()
                        self._signal(running, signal.SIGKILL)
            for task_id, status in queries.task_recover_lost(conn, self.lease):
                logger.warning("recovered a task lost with its worker",
                               extra={"task_id": str(task_id), "status": status.value})
            if self.retention is not None:  # one bounded batch per heartbeat
                queries.task_purge_batch(conn, self.retention, TERMINAL, RETENTION_BATCH)
        except psycopg.OperationalError:
            self._reconnect()

    def _connect(self) -> None:
        conn = db.connect(application_name=f"pgbg worker {self.id}")
        if self.listen:
            notify.listen(conn, notify.QUEUED, notify.CANCEL, notify.PERIODIC)
        self._conn, self._inbox = conn, notify.Inbox(conn)
        self._conn_fd = conn.fileno()
        self._selector.register(self._conn_fd, selectors.EVENT_READ, "db")

    def _reconnect(self) -> None:
        """Reconnect with backoff; then rescan, so nothing that happened meanwhile is missed."""
        if self._conn is not None:
            self._selector.unregister(self._conn_fd)
            self._conn.close()
            self._conn, self._conn_fd, self._inbox = None, -1, None
        delay = 0.1
        while True:
            try:
                self._connect()
                break
            except DatabaseUnavailable:
                now = time.monotonic()
                hard_stop = self._hard_stop_at is not None and now >= self._hard_stop_at
                if hard_stop and not self._children.running:
                    # Told to stop at once, nothing left running: give up. What could not
                    # be written is recovered like any lost worker's tasks, after the lease.
                    raise DatabaseUnavailable(
                        f"stopping without the database: {len(self._writes)} writes not made; "
                        "the tasks are recovered after the lease") from None
                logger.warning("database unavailable; retrying", extra={"delay": delay})
                self._serve_children(delay)
                delay = min(delay * 2, 5.0)
        self._want_claim = True
        self._next_heartbeat = self._next_cancel_check = 0.0
        try:
            assert self._conn is not None
            started = [c.task.id for c in [*self._children.running.values(), *self._ready]]
            for task_id in queries.task_release_unstarted(self._conn, self.id, started):
                logger.warning("re-queued a task claimed as the connection dropped",
                               extra={"task_id": str(task_id)})
        except psycopg.OperationalError:
            pass  # the next failing call reconnects again

    def _serve_children(self, timeout: float) -> None:
        """While the database is away, keep hearing from children (their writes wait)."""
        for key, _mask in self._selector.select(timeout):
            if key.data != "db":
                self._on_process_event(key.data)
        now = time.monotonic()
        if self._hard_stop_at is not None and now >= self._hard_stop_at:
            self._kill_all("the worker stopped before the task finished")
        self._escalate_kills(now)
        self._enforce_time_limits(now)


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


def _outcome(running: Child, code: int | None, sig: int | None) -> Outcome:
    return decisions.outcome(running.task, killed_by=running.killed_by_worker,
                             kill_status=running.kill_status, report=running.report,
                             error_exit=running.error_exit, code=code, sig=sig)
