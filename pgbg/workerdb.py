"""The worker's database: its connection, its notifications and the writes of its loop.

``WorkerDatabase`` is the only part of the worker that runs SQL, and the only one that
judges database errors (``failed``): a lost connection is dropped (the worker reconnects
in its own loop, with ``reconnect``'s backoff, keeping all it still has to write); a
timeout or a lock is waited out (``retry_at``); a refused batch is written item by item,
so one bad write cannot hold back the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from pgbg import db, notify, periodic, queries
from pgbg.attempts import Attempt, Ledger, Retry
from pgbg.exceptions import DatabaseUnavailable
from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome, Step
from pgbg.storable import clean_text

logger = logging.getLogger(__name__)
FENCE_WAIT = 5.0  # seconds a reconnect waits for the old backend to be gone
# How long a worker's statement waits for a lock (the step and claim functions carry the
# same, migration 0012): a table locked for longer fails the write, tried again later,
# and the worker goes on renewing its lease rather than hang until it lapses.
LOCK_TIMEOUT = "5s"
WRITE_RETRY = 1.0  # seconds before writes the database refused or timed out are tried again


# -- what a task records as it runs, written before its outcome ------------------------

@dataclass(frozen=True)
class Info:
    task: BackgroundTask
    message: str


@dataclass(frozen=True)
class ErrorExit:
    task: BackgroundTask
    message: str
    pid: int | None


@dataclass(frozen=True)
class Link:
    task_id: uuid.UUID
    kind: str
    key: str


@dataclass
class Output:
    task: BackgroundTask
    texts: list[str] = field(default_factory=list)  # one log row per burst


@dataclass(frozen=True)
class ReleaseUnknown:
    """Give back every claim of this worker's that the ledger does not hold."""


Record = Info | ErrorExit | Link | Output | ReleaseUnknown


class WorkerDatabase:
    def __init__(self, worker_id: uuid.UUID, hostname: str, concurrency: int, listen: bool,
                 selector: selectors.BaseSelector) -> None:
        self.worker_id = worker_id
        self.hostname = hostname
        self.concurrency = concurrency
        self.listen = listen
        self.application_name = f"pgbg worker {worker_id}"
        self._selector = selector
        self._conn: psycopg.Connection[Any] | None = None
        self._inbox: notify.Inbox | None = None
        self._fd = -1  # as registered with the selector (a broken connection cannot say)
        self._backend_pid: int | None = None  # only on a direct connection (no pooler)
        self._old_backend: int | None = None  # the one a reconnect must outlive
        self.retry_at = 0.0  # after a refused or timed-out write: not before this
        self.next_connect = 0.0  # while disconnected: the next try
        self._connect_delay = 0.1

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        assert self._conn is not None
        return self._conn

    def broken(self) -> bool:
        """After an error: is the connection gone (rather than one statement refused)?"""
        conn = self._conn
        return conn is None or conn.closed or conn.broken

    def connect(self) -> None:
        """Connect (``DatabaseUnavailable`` if it cannot), LISTEN, and remember which backend
        serves us — only where ``pg_backend_pid()`` agrees with the protocol's, i.e. no
        pooler in between that could hand that backend to somebody else."""
        # a worker told not to LISTEN may sit behind a transaction-pooling PgBouncer
        conn = db.connect(application_name=self.application_name,
                          prepare=None if self.listen else False)
        try:
            if self.listen:
                # new tasks only while on duty (pgbg/duty.py)
                notify.listen(conn, notify.DUTY, notify.CANCEL, notify.PERIODIC)
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        except psycopg.Error:
            conn.close()
            raise
        self._backend_pid = row[0] if row and row[0] == conn.info.backend_pid else None
        self._conn, self._inbox = conn, notify.Inbox(conn)
        self._fd = conn.fileno()
        self._selector.register(self._fd, selectors.EVENT_READ, "db")

    def reconnect(self) -> bool:
        """One try, with backoff between tries; True once connected."""
        try:
            self.connect()
        except DatabaseUnavailable:
            logger.warning("database unavailable; retrying", extra={"delay": self._connect_delay})
        except psycopg.Error:
            logger.warning("could not set up a new connection; retrying", exc_info=True)
        else:
            self._connect_delay, self.retry_at = 0.1, 0.0
            return True
        self.next_connect = time.monotonic() + self._connect_delay
        self._connect_delay = min(self._connect_delay * 2, 5.0)
        return False

    def failed(self, what: str, exc: Exception) -> bool:
        """Judge an error of a database call; True if it is one to wait out (the connection
        is gone, or a timeout or lock), False if the database refused what was asked."""
        if isinstance(exc, psycopg.Error) and self.broken():
            self.disconnect()
            self.next_connect = 0.0
            return True
        self.retry_at = time.monotonic() + WRITE_RETRY
        # a timeout, a lock, a full disk: try again later. Not a limit of the database
        # (54000: an index row too big, a value too large): that write never goes in.
        if isinstance(exc, psycopg.OperationalError) and not isinstance(
                exc, psycopg.errors.ProgramLimitExceeded):
            logger.warning(f"{what} did not go through; trying again", exc_info=exc)
            return True
        logger.error(f"{what} was refused", exc_info=exc)
        return False

    def disconnect(self) -> None:
        """Drop a connection that failed; its backend is the one the next connection must
        see gone before it releases anything."""
        if self._conn is None:
            return
        self._old_backend = self._backend_pid
        self._selector.unregister(self._fd)
        self._conn.close()
        self._conn, self._fd, self._inbox = None, -1, None

    def fence_old_backend(self) -> None:
        """Make sure the backend of the connection that failed can commit nothing more (a
        claim it was running would otherwise commit after our release): terminate it and
        wait until it is gone. A claim that commits anyway is released at a heartbeat."""
        old, self._old_backend = self._old_backend, None
        if old is None or old == self._backend_pid:
            return
        conn = self.conn
        conn.execute("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE pid = %s AND application_name = %s""",
                     (old, db.versioned_name(self.application_name)))
        deadline = time.monotonic() + FENCE_WAIT
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (old,)).fetchone():
            if time.monotonic() > deadline:
                logger.warning("the old backend is still there; going on",
                               extra={"pid": old})
                return
            time.sleep(0.02)

    def close(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            queries.worker_unregister(self._conn, self.worker_id)
        self.disconnect()

    # -- the loop's writes ---------------------------------------------------------------

    def write(self, records: list[Record], finals: Sequence[Attempt],
              pids: Sequence[Attempt], max_claim: int, ledger: Ledger) -> Step | None:
        """One ``step``: what is written leaves ``records`` and is marked so in ``ledger``.
        None if it failed: then nothing was committed (tried again later), or the database
        refused the batch and it was written item by item, without the claim."""
        batch, known = list(records), ledger.known_ids()
        try:
            step = self.step(batch, finals, pids, max_claim, known)
        except Exception as exc:  # no error may end the worker's loop
            if not self.failed("a batch of writes", exc):
                self.write_one_by_one(records, ledger)
            return None
        del records[:len(batch)]
        for attempt in pids:
            attempt.pid_written = True
        ledger.committed(list(finals))
        for task_id in step.unwritten:
            logger.warning("outcome not written: the task is no longer ours",
                           extra={"task_id": str(task_id)})
        return step

    def write_one_by_one(self, records: list[Record], ledger: Ledger) -> None:
        """After a batch was refused: each write in its own transaction. A refused record is
        dropped (logged); a refused outcome is replaced by one that says why it could not
        be stored, written on the next try."""
        self.retry_at, known, refused = 0.0, ledger.known_ids(), False
        while records:
            try:
                with self.bounded():
                    self.write_record(records[0], known)
            except Exception as exc:
                if self.failed("a task's record", exc):
                    return
            del records[0]
        for attempt in ledger.pids_to_write():
            try:
                self.write_pid(attempt)
            except Exception as exc:
                if self.failed("a task's pid", exc):
                    return
            attempt.pid_written = True
        for attempt in ledger.pending_finals():
            try:
                self.write_final(attempt)
            except Exception as exc:
                if self.failed("a task's outcome", exc):
                    return
                attempt.final = _unstorable(attempt, exc)  # written on the next try
                refused = True
                continue
            ledger.committed([attempt])
        # after a refused outcome, its replacement is tried after WRITE_RETRY, not at once
        self.retry_at = time.monotonic() + WRITE_RETRY if refused else 0.0

    def step(self, records: Sequence[Record], finals: Sequence[Attempt],
             pids: Sequence[Attempt], max_claim: int, known: Sequence[uuid.UUID]) -> Step:
        """Everything in one transaction: what tasks recorded, then retries, then pids,
        outcomes and the claim in one statement (``pgbg.task_step``)."""
        conn = self.conn
        retries = [a.final for a in finals if isinstance(a.final, Retry)]
        outcomes = [a.final for a in finals if isinstance(a.final, Outcome)]
        # an outcome carries its pid if that is not written yet: one row version
        pids = [*pids, *(a for a in finals if isinstance(a.final, Outcome)
                         and a.pid is not None and not a.pid_written)]
        with self.bounded() if (records or retries) else contextlib.nullcontext():
            for record in records:
                self.write_record(record, known)
            fenced = [retry.task.id for retry in retries
                      if not queries.task_retry_later(conn, self.worker_id, retry.task,
                                                      retry.error, retry.delay)]
            step = queries.task_step(conn, self.worker_id, self.hostname, max_claim,
                                     [(a.task.id, a.task.attempt, a.pid or 0) for a in pids],
                                     outcomes)
        return step._replace(unwritten=[*fenced, *step.unwritten]) if fenced else step

    def write_record(self, record: Record, known: Sequence[uuid.UUID]) -> None:
        conn = self.conn
        match record:
            case Info(task, message):
                queries.task_record_info(conn, task, message)
            case ErrorExit(task, message, pid):
                queries.task_record_error_exit(conn, task, message, pid)
            case Link(task_id, kind, key):
                queries.task_link_insert(conn, task_id, kind, key)
            case Output(task, texts):
                queries.task_log_insert(conn, task.id, "output", "".join(texts))
            case ReleaseUnknown():
                self.release_unknown(known)

    def write_final(self, attempt: Attempt) -> list[uuid.UUID]:
        """One attempt's final on its own; the ids of outcomes fenced out."""
        with self.conn.transaction():
            return self.step([], [attempt], [], 0, []).unwritten

    def write_pid(self, attempt: Attempt) -> None:
        with self.conn.transaction():
            self.step([], [], [attempt], 0, [])

    @contextlib.contextmanager
    def bounded(self) -> Iterator[None]:
        """A transaction whose statements wait at most LOCK_TIMEOUT for a lock (SET LOCAL:
        nothing lingers on the connection, so a pooler may hand it to anyone after)."""
        with self.conn.transaction():
            self.conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            yield

    def release_unknown(self, known: Sequence[uuid.UUID]) -> None:
        with self.bounded():
            released = queries.task_release_unstarted(self.conn, self.worker_id, known)
        for task_id in released:
            logger.warning("re-queued a task this worker had claimed but never started",
                           extra={"task_id": str(task_id)})

    # -- what the loop asks -------------------------------------------------------------

    def register(self) -> None:
        queries.worker_register(self.conn, self.worker_id, self.hostname, os.getpid(),
                                self.concurrency)

    def heartbeat(self) -> bool:
        """Renew the lease; False if this worker had been presumed dead."""
        with self.bounded():
            return queries.worker_heartbeat(self.conn, self.worker_id, self.hostname,
                                            os.getpid(), self.concurrency)

    def owned(self, attempts: Sequence[Attempt]) -> set[uuid.UUID]:
        with self.bounded():
            return queries.task_list_owned(self.conn, self.worker_id,
                                           [(a.task.id, a.task.attempt) for a in attempts])

    def recover_lost(self, lease: float) -> None:
        with self.bounded():
            recovered = queries.task_recover_lost(self.conn, lease)
        for task_id, status in recovered:
            logger.warning("recovered a task lost with its worker",
                           extra={"task_id": str(task_id), "status": status.value})

    def purge(self, retention: float, statuses: Sequence[str], batch: int) -> None:
        with self.bounded():
            queries.task_purge_batch(self.conn, retention, statuses, batch)

    def cancel_requested(self, ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, str]]:
        with self.bounded():
            return queries.task_list_cancel_requested(self.conn, self.worker_id, ids)

    def duty_take(self) -> bool:
        return queries.worker_duty_take(self.conn)

    def duty_release(self) -> None:
        queries.worker_duty_release(self.conn)

    def duty_freed(self) -> None:
        queries.worker_duty_freed(self.conn)

    def notifications(self) -> list[psycopg.Notify]:
        return self._inbox.take() if self._inbox is not None else []

    def pending_notifications(self) -> bool:
        return self._inbox is not None and bool(self._inbox.pending)

    def enqueue_periodic(self, now: datetime | None) -> periodic.Tick:
        with self.bounded():
            return periodic.enqueue_due(self.conn, now)


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

