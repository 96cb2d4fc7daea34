"""The worker: one parent process, one single-threaded loop, one forked child per task.

The loop waits (``selectors``) on the LISTEN connection, a wake-up pipe for ``stop()``,
and, per running child, a pidfd (readable when the child exits, so reaping needs no
SIGCHLD handler and a recycled pid is never mistaken for ours) and the pipe the child
reports its outcome on. It claims when woken by NOTIFY, when a slot frees up, and on a
slow poll, so a lost notification costs latency, never a task.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgbg import child, db, notify, queries
from pgbg.exceptions import DatabaseUnavailable, InvalidOption
from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome

logger = logging.getLogger(__name__)


@dataclass
class _Child:
    task: BackgroundTask
    pid: int
    pidfd: int
    pipe: int
    output: bytearray = field(default_factory=bytearray)
    deadline: float | None = None  # when its time limit runs out (monotonic)
    killed_by_worker: str | None = None  # why the worker killed it, if it did
    kill_status: TaskStatus = TaskStatus.TERMINATED  # what a kill is recorded as
    kill_at: float | None = None  # when SIGTERM escalates to SIGKILL


class Worker:
    """Runs queued tasks, at most ``concurrency`` at a time, each in a forked child.

    ``run()`` loops until ``stop()``; ``run_once()`` is one step of that loop, for tests
    and for embedding in a loop of your own. Only the CLI installs signal handlers.
    """

    def __init__(self, concurrency: int = 1, *, poll_interval: float = 5.0,
                 heartbeat_interval: float = 5.0, lease: float = 30.0,
                 shutdown_timeout: float = 30.0, kill_grace: float = 5.0,
                 task_timeout: float | None = None) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidOption(f"concurrency must be a positive int, not {concurrency!r}")
        if not 0 < heartbeat_interval < lease:
            raise InvalidOption("the heartbeat interval must be positive and shorter than the "
                                f"lease ({heartbeat_interval} vs {lease})")
        if task_timeout is not None and not task_timeout > 0:
            raise InvalidOption(f"task_timeout must be positive, not {task_timeout!r}")
        self.id = uuid.uuid4()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease
        self.shutdown_timeout = shutdown_timeout
        self.kill_grace = kill_grace
        self.task_timeout = task_timeout
        self.hostname = socket.gethostname()
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_fd = -1  # as registered with the selector (a broken conn cannot say)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._children: dict[int, _Child] = {}
        self._unwritten: list[Outcome] = []
        self._want_claim = True
        self._next_poll = 0.0
        self._next_heartbeat = 0.0
        self._next_cancel_check = 0.0
        self._stopping = False
        self._hard_stop_at: float | None = None
        self._started = False

    # -- public --------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._children)

    def stop(self, *, force: bool = False) -> None:
        """Stop claiming; let running tasks finish (``force``: kill them now).

        Safe to call from a signal handler: it only sets flags and writes one byte.
        """
        now = time.monotonic()
        if self._stopping or force:
            self._hard_stop_at = now
        else:
            self._hard_stop_at = now + self.shutdown_timeout
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
            while not (self._stopping and not self._children):
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
        self._connect()
        assert self._conn is not None
        queries.worker_register(self._conn, self.id, self.hostname, os.getpid(), self.concurrency)
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        self._started = True
        logger.info("worker started", extra={"worker_id": str(self.id),
                                             "concurrency": self.concurrency})

    def run_once(self, timeout: float | None = 0.0) -> None:
        """One step: claim into free slots, wait for events up to ``timeout``, handle them."""
        self.start()
        now = time.monotonic()
        if self._hard_stop_at is not None and now >= self._hard_stop_at:
            self._kill_all("the worker stopped before the task finished")
        self._escalate_kills(now)
        self._enforce_time_limits(now)
        if self._children and now >= self._next_cancel_check:
            self._check_cancel_requests()
        due = self._want_claim or now >= self._next_poll
        if due and not self._stopping and self._free_slots():
            self._claim()
        wait = self._wait_time(timeout)
        self._dispatch(self._selector.select(wait))
        self._write_outcomes()
        if time.monotonic() >= self._next_heartbeat:
            self._heartbeat()

    def _dispatch(self, events: list[tuple[selectors.SelectorKey, int]],
                  with_database: bool = True) -> None:
        for key, _mask in events:
            kind, data = key.data
            # One batch may hold a child's exit and its pipe: reaping closes the pipe,
            # so an event whose fd no longer belongs to a live child is stale.
            if kind == "pidfd" and data.pidfd == key.fd:
                self._reap(data)
            elif kind == "pipe" and data.pipe == key.fd:
                self._read_report(data)
            elif kind == "wake":
                self._drain_wake_pipe()
            elif kind == "db" and with_database:
                self._on_notifications()

    def close(self) -> None:
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

    # -- the loop's parts ------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.concurrency - len(self._children)

    def _wait_time(self, timeout: float | None) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat]
        for c in self._children.values():
            deadlines += [t for t in (c.kill_at, c.deadline) if t is not None]
        if self._children:
            deadlines.append(self._next_cancel_check)
        if self._stopping:
            if self._hard_stop_at is not None:
                deadlines.append(self._hard_stop_at)
        elif self._free_slots():
            if self._want_claim:
                return 0.0
            deadlines.append(self._next_poll)
        if self._unwritten:
            deadlines.append(now + 1.0)  # retry writes the database refused
        wait = max(0.0, min(deadlines) - now)
        return wait if timeout is None else min(wait, timeout)

    def _claim(self) -> None:
        free = self._free_slots()
        self._next_poll = time.monotonic() + self.poll_interval
        try:
            assert self._conn is not None
            tasks = queries.task_claim(self._conn, self.id, self.hostname, free)
        except psycopg.OperationalError:
            self._reconnect()
            return
        self._want_claim = len(tasks) == free  # a full batch: more may be waiting
        started = [self._fork(task) for task in tasks]
        if started:
            try:
                assert self._conn is not None
                queries.task_set_pids(self._conn, self.id,
                                      [(c.task.id, c.task.attempt, c.pid) for c in started])
            except psycopg.OperationalError:
                self._reconnect()

    def _fork(self, task: BackgroundTask) -> _Child:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            child.run(task, write_fd, parent_pid)
        os.close(write_fd)
        try:
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins
        except OSError:
            pass  # the child already exec'd or exited; its own setpgid covers it
        os.set_blocking(read_fd, False)
        running = _Child(task=task, pid=pid, pidfd=os.pidfd_open(pid), pipe=read_fd)
        limit = task.timeout or self.task_timeout
        if limit:
            running.deadline = time.monotonic() + limit
        self._children[pid] = running
        self._selector.register(running.pidfd, selectors.EVENT_READ, ("pidfd", running))
        self._selector.register(read_fd, selectors.EVENT_READ, ("pipe", running))
        logger.debug("task started", extra={"task_id": str(task.id), "task_type": task.task_type,
                                            "pid": pid})
        return running

    def _read_report(self, running: _Child) -> bool:
        """Read what the child has written; True at end of file."""
        while True:
            try:
                chunk = os.read(running.pipe, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                self._selector.unregister(running.pipe)
                os.close(running.pipe)
                running.pipe = -1
                return True
            running.output += chunk

    def _reap(self, running: _Child) -> None:
        # The child has exited but is not reaped, so its pid (and group id) cannot have
        # been reused: kill whatever it left behind in its group, then reap it.
        _kill_group(running, signal.SIGKILL)
        _pid, status = os.waitpid(running.pid, 0)
        if running.pipe >= 0:
            self._read_report(running)  # the child's report is in the pipe buffer by now
            if running.pipe >= 0:  # a grandchild still holds the pipe open: stop waiting on it
                self._selector.unregister(running.pipe)
                os.close(running.pipe)
                running.pipe = -1
        self._selector.unregister(running.pidfd)
        os.close(running.pidfd)
        running.pidfd = -1
        del self._children[running.pid]
        self._unwritten.append(_outcome(running, status))
        self._want_claim = True

    def _kill_all(self, reason: str) -> None:
        for running in self._children.values():
            if running.kill_at is None or running.killed_by_worker is None:
                running.killed_by_worker = running.killed_by_worker or reason
                running.kill_at = time.monotonic()
                _kill_group(running, signal.SIGKILL)

    def _terminate(self, running: _Child, reason: str,
                   status: TaskStatus = TaskStatus.TERMINATED) -> None:
        """SIGTERM the child's process group now, SIGKILL it after the grace period."""
        if running.killed_by_worker is not None:
            return
        running.killed_by_worker = reason
        running.kill_status = status
        running.kill_at = time.monotonic() + self.kill_grace
        _kill_group(running, signal.SIGTERM)
        logger.info("terminating task", extra={"task_id": str(running.task.id),
                                               "pid": running.pid})

    def _enforce_time_limits(self, now: float) -> None:
        for running in self._children.values():
            if running.deadline is not None and now >= running.deadline:
                running.deadline = None
                limit = running.task.timeout or self.task_timeout
                self._terminate(running, f"timed out after {limit:g}s", TaskStatus.FAILED)

    def _escalate_kills(self, now: float) -> None:
        for running in self._children.values():
            if running.kill_at is not None and now >= running.kill_at:
                _kill_group(running, signal.SIGKILL)
                running.kill_at = now + 1.0  # keep at it until the child is reaped

    def _check_cancel_requests(self) -> None:
        """Terminate the children whose rows ask for it: the row, not a NOTIFY, decides."""
        self._next_cancel_check = time.monotonic() + self.poll_interval
        by_task = {c.task.id: c for c in self._children.values()}
        if not by_task:
            return
        try:
            assert self._conn is not None
            requested = queries.task_list_cancel_requested(self._conn, self.id, list(by_task))
        except psycopg.OperationalError:
            self._reconnect()
            return
        for task_id, requested_by in requested:
            self._terminate(by_task[task_id], f"terminated by {requested_by or 'request'}")

    def _on_notifications(self) -> None:
        try:
            assert self._conn is not None
            notes = notify.drain(self._conn)
        except psycopg.OperationalError:
            self._reconnect()
            return
        if any(n.channel == notify.QUEUED for n in notes):
            self._want_claim = True
        ours = {str(c.task.id) for c in self._children.values()}
        if any(n.channel == notify.CANCEL and n.payload in ours for n in notes):
            self._check_cancel_requests()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _write_outcomes(self) -> None:
        if not self._unwritten:
            return
        outcomes, self._unwritten = self._unwritten, []
        try:
            assert self._conn is not None
            written = set(queries.task_finish(self._conn, self.id, outcomes))
        except psycopg.OperationalError:
            self._unwritten = outcomes + self._unwritten  # written once the database is back
            self._reconnect()
            return
        for o in outcomes:
            if o.task_id not in written:
                logger.warning("outcome not written: the task is no longer ours",
                               extra={"task_id": str(o.task_id), "attempt": o.attempt})

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
            if self._children:
                attempts = [(c.task.id, c.task.attempt) for c in self._children.values()]
                owned = queries.task_list_owned(conn, self.id, attempts)
                for running in self._children.values():
                    if running.task.id not in owned and running.killed_by_worker is None:
                        # Recovered elsewhere after our lease lapsed: it must not run twice.
                        running.killed_by_worker = "the task is no longer this worker's"
                        running.kill_at = time.monotonic()
                        _kill_group(running, signal.SIGKILL)
            for task_id, status in queries.task_recover_lost(conn, self.lease):
                logger.warning("recovered a task lost with its worker",
                               extra={"task_id": str(task_id), "status": status.value})
        except psycopg.OperationalError:
            self._reconnect()

    # -- the connection ------------------------------------------------------------

    def _connect(self) -> None:
        conn = db.connect(application_name=f"pgbg worker {self.id}")
        notify.listen(conn, notify.QUEUED, notify.CANCEL)
        self._conn = conn
        self._conn_fd = conn.fileno()
        self._selector.register(self._conn_fd, selectors.EVENT_READ, ("db", None))

    def _reconnect(self) -> None:
        """Reconnect with backoff; then rescan, so nothing that happened meanwhile is missed."""
        if self._conn is not None:
            self._selector.unregister(self._conn_fd)
            self._conn.close()
            self._conn, self._conn_fd = None, -1
        delay = 0.1
        while True:
            try:
                self._connect()
                break
            except DatabaseUnavailable:
                logger.warning("database unavailable; retrying", extra={"delay": delay})
                self._reap_ready_children(delay)
                delay = min(delay * 2, 5.0)
        # Rescan everything that may have happened while we were away.
        self._want_claim = True
        self._next_heartbeat = self._next_cancel_check = 0.0
        try:
            assert self._conn is not None
            started = [c.task.id for c in self._children.values()]
            for task_id in queries.task_release_unstarted(self._conn, self.id, started):
                logger.warning("re-queued a task claimed as the connection dropped",
                               extra={"task_id": str(task_id)})
        except psycopg.OperationalError:
            pass  # the next failing call reconnects again

    def _reap_ready_children(self, timeout: float) -> None:
        """While the database is away, keep reaping (outcomes wait to be written)."""
        self._dispatch(self._selector.select(timeout), with_database=False)


def _kill_group(running: _Child, sig: signal.Signals) -> None:
    """Signal the child's process group; the child is unreaped, so its pid is still ours."""
    try:
        os.killpg(running.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pragma: no cover - would mean the group is not ours
        if exc.errno != errno.EPERM:
            raise


def _outcome(running: _Child, wait_status: int) -> Outcome:
    task = running.task
    exit_code = os.waitstatus_to_exitcode(wait_status)
    sig = -exit_code if exit_code < 0 else None
    code = exit_code if exit_code >= 0 else None
    report: dict[str, Any] = {}
    if running.output:
        try:
            report = json.loads(running.output)
        except ValueError:
            report = {}
    if running.killed_by_worker is not None:
        return Outcome(task.id, task.attempt, running.kill_status,
                       error=running.killed_by_worker, exit_code=code, signal=sig)
    if report:
        status = TaskStatus(report["status"])
        return Outcome(task.id, task.attempt, status, result=report.get("result"),
                       error=report.get("error"), exit_code=code, signal=sig,
                       error_exit_recorded=bool(report.get("error_exit")))
    # No report: the child was killed, or left through os._exit before reporting.
    if sig is not None:
        error = f"killed by signal {signal.Signals(sig).name}"
        return Outcome(task.id, task.attempt, TaskStatus.FAILED, error=error, signal=sig)
    if code == 0:
        return Outcome(task.id, task.attempt, TaskStatus.SUCCEEDED, exit_code=0)
    return Outcome(task.id, task.attempt, TaskStatus.FAILED,
                   error=f"exited with code {code}", exit_code=code)
