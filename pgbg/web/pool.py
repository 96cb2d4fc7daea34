"""A few idle connections for the dashboard's request threads, guarded by a lock.

Every statement runs in autocommit: no transaction stays open while a page renders (a
request takes a connection, reads, gives it back, then renders). Nothing is SET on a
connection and statements are prepared only as ``db.connect`` allows, so it works through
a transaction-pooling PgBouncer.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pgbg import db
from pgbg.exceptions import DatabaseUnavailable, SchemaMissing

PING_AFTER = 5.0  # seconds idle after which a connection is checked before use


def _ended(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection's server already said goodbye: an idle session receives
    nothing unasked, so anything waiting on its socket (the FATAL a pg_terminate_backend,
    a restart or a failover sends, then end of file) means it is gone, or unsure. No
    round trip: a poll with no timeout (poll, not select: a host app may hold more than
    1,024 descriptors)."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


class Pool:
    def __init__(self, url: str | None = None, idle: int = 4, size: int = 8,
                 wait: float = 15.0) -> None:
        self.url = url
        self.max_idle = idle
        self.wait = wait
        self._idle: list[tuple[float, psycopg.Connection[Any]]] = []  # (idle since, conn)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)  # open at once, however many requests
        self.size = size

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=self.wait):
            raise DatabaseUnavailable(f"all {self.size} of the dashboard's connections stayed "
                                      f"busy for {self.wait:g}s")
        try:
            with self._checked_out() as conn:
                yield conn
        finally:
            self._slots.release()

    @contextmanager
    def _checked_out(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            since, conn = self._idle.pop() if self._idle else (0.0, None)
        if conn is not None and not conn.closed and _ended(conn):
            conn.close()  # ended while idle (a restart, pg_terminate_backend): a fresh one
        elif conn is not None and time.monotonic() - since > PING_AFTER:
            try:  # the server may have restarted meanwhile: one round trip, not a 503
                conn.execute("SELECT 1")
            except psycopg.Error:
                conn.close()
        if conn is None or conn.closed or conn.broken:
            conn = db.connect(self.url, application_name="pgbg web")
        reusable = False
        try:
            yield conn
            reusable = True
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise SchemaMissing() from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"lost the connection to {db.mask_url(self.url or db.database_url())}: "
                f"{db.mask_url(str(exc).strip())}") from exc
        finally:
            kept = False
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            if reusable and idle and not conn.broken:
                with self._lock:
                    if len(self._idle) < self.max_idle:
                        self._idle.append((time.monotonic(), conn))
                        kept = True
            if not kept:
                conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _since, conn in idle:
            conn.close()
