"""Notifications are never lost to the connection that also runs queries."""

from __future__ import annotations

from typing import Any

import psycopg

from pgbg import notify


def test_inbox_keeps_notifications_read_during_queries(database_url: str,
                                                        conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        notify.listen(listener, notify.QUEUED)
        inbox = notify.Inbox(listener)
        for round_ in range(3):  # every round, not only the first take()
            conn.execute("SELECT pg_notify(%s, %s)", (notify.QUEUED, str(round_)))
            # a query on the listening connection reads the notification off the socket
            listener.execute("SELECT pg_sleep(0.05)")
            assert [n.payload for n in inbox.take()] == [str(round_)]
        assert inbox.take() == []
