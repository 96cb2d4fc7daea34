"""The worker's database: its connection, its notifications and the writes of its loop.

``WorkerDatabase`` is the only part of the worker that runs SQL. It does not retry or
decide: a call either returns or raises, and ``broken`` says whether the connection is
gone (the worker then reconnects in its own loop, keeping everything it still has to
write) or the database refused that one write (the worker then writes item by item).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from pgbg import db, notify, periodic, queries
from pgbg.attempts import Attempt, Retry
from pgbg.models import BackgroundTask
from pgbg.queries import Outcome, Step

logger = logging.getLogger(__name__)
FENCE_WAIT = 5.0  # seconds a reconnect waits for the old backend to be gone


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
        conn = db.connect(application_name=self.application_name)
        try:
            if self.listen:
                notify.listen(conn, notify.QUEUED, notify.CANCEL, notify.PERIODIC)
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        except psycopg.Error:
            conn.close()
            raise
        self._backend_pid = row[0] if row and row[0] == conn.info.backend_pid else None
        self._conn, self._inbox = conn, notify.Inbox(conn)
        self._fd = conn.fileno()
        self._selector.register(self._fd, selectors.EVENT_READ, "db")

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
        with conn.transaction() if (records or retries) else contextlib.nullcontext():
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

    def release_unknown(self, known: Sequence[uuid.UUID]) -> None:
        for task_id in queries.task_release_unstarted(self.conn, self.worker_id, known):
            logger.warning("re-queued a task this worker had claimed but never started",
                           extra={"task_id": str(task_id)})

    # -- what the loop asks -------------------------------------------------------------

    def register(self) -> None:
        queries.worker_register(self.conn, self.worker_id, self.hostname, os.getpid(),
                                self.concurrency)

    def heartbeat(self) -> bool:
        """Renew the lease; False if this worker had been presumed dead."""
        return queries.worker_heartbeat(self.conn, self.worker_id, self.hostname, os.getpid(),
                                        self.concurrency)

    def owned(self, attempts: Sequence[Attempt]) -> set[uuid.UUID]:
        return queries.task_list_owned(self.conn, self.worker_id,
                                       [(a.task.id, a.task.attempt) for a in attempts])

    def recover_lost(self, lease: float) -> None:
        for task_id, status in queries.task_recover_lost(self.conn, lease):
            logger.warning("recovered a task lost with its worker",
                           extra={"task_id": str(task_id), "status": status.value})

    def purge(self, retention: float, statuses: Sequence[str], batch: int) -> None:
        queries.task_purge_batch(self.conn, retention, statuses, batch)

    def cancel_requested(self, ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, str]]:
        return queries.task_list_cancel_requested(self.conn, self.worker_id, ids)

    def notifications(self) -> list[psycopg.Notify]:
        return self._inbox.take() if self._inbox is not None else []

    def pending_notifications(self) -> bool:
        return self._inbox is not None and bool(self._inbox.pending)

    def enqueue_periodic(self, now: datetime | None) -> periodic.Tick:
        return periodic.enqueue_due(self.conn, now)
