"""LISTEN/NOTIFY: channel names and helpers to read notifications without blocking."""

from __future__ import annotations

from typing import Any

import psycopg

# Payloads: QUEUED carries nothing (PostgreSQL folds identical notifications of one
# transaction into one); DONE carries the task id. Only the worker on duty LISTENs to
# QUEUED (see pgbg/duty.py); every worker LISTENs to DUTY, which says the duty is free.
QUEUED = "pgbg_queued"
DUTY = "pgbg_duty"
DONE = "pgbg_done"
PERIODIC = "pgbg_periodic"  # payload: the name of a periodic task declared or changed
CANCEL = "pgbg_cancel"  # payload: the task id; the owning worker checks the row before it kills


def listen(conn: psycopg.Connection[Any], *channels: str) -> None:
    for channel in channels:
        conn.execute(f"LISTEN {channel}")


class Inbox:
    """Every notification a connection receives, including those psycopg reads while the
    connection runs a query: those never make the socket readable again, so a loop that
    only waited on the socket would sleep through them until its next poll."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pending: list[psycopg.Notify] = []
        conn.add_notify_handler(self._received)

    def _received(self, note: psycopg.Notify) -> None:
        self.pending.append(note)  # whatever list ``pending`` is now

    def take(self) -> list[psycopg.Notify]:
        """What has arrived, without blocking; ``OperationalError`` if the connection died."""
        received = drain(self.conn)
        taken, self.pending = self.pending + received, []
        return taken


def drain(conn: psycopg.Connection[Any]) -> list[psycopg.Notify]:
    """Notifications already received on ``conn``, without blocking.

    Raises ``psycopg.OperationalError`` if the connection was lost.
    """
    pgconn = conn.pgconn
    pgconn.consume_input()
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError("the LISTEN connection was lost")
    received = []
    encoding = conn.info.encoding
    while (note := pgconn.notifies()) is not None:
        received.append(psycopg.Notify(note.relname.decode(encoding),
                                       note.extra.decode(encoding), note.be_pid))
    return received
