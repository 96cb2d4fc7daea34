"""``/events``: server-sent events telling open pages that the queue changed.

One thread per dashboard process LISTENs on pgbg's channels (a task queued, done,
cancelled; a periodic task changed) and wakes every subscribed stream; each stream sends
at most one ``changed`` event per ``MIN_INTERVAL`` however busy the queue, and a comment
every ``KEEPALIVE`` seconds so proxies keep the connection. Pages re-fetch their live
fragments on the event (htmx ``pgbg:changed``) and still poll slowly, so a lost
notification or connection costs latency only. Only when ``db.listen_enabled()``:
in poll-only mode there is no ``/events`` and pages poll faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator

import psycopg

from pgbg import db, notify
from pgbg.exceptions import PgbgError

logger = logging.getLogger(__name__)
CHANNELS = (notify.QUEUED, notify.DONE, notify.CANCEL, notify.PERIODIC)
MIN_INTERVAL = 1.0
KEEPALIVE = 15.0
RECONNECT = 2.0


class Broadcaster:
    def __init__(self, url: str | None) -> None:
        self.url = url
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        """Start the LISTEN thread unless it runs (or ran: a stopped one stays stopped)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._listen, name="pgbg web listen",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._publish()  # every stream wakes, sees the stop and ends
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with db.connect(self.url, application_name="pgbg web listen") as conn:
                    notify.listen(conn, *CHANNELS)
                    self._publish()  # after a reconnect anything may have changed
                    while not self._stop.is_set():
                        if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)):
                            notify.drain(conn)
                            self._publish()
            except (psycopg.Error, PgbgError) as exc:
                logger.warning("dashboard LISTEN connection lost; reconnecting",
                               extra={"error": db.mask_url(str(exc))})
                self._stop.wait(RECONNECT)

    def _publish(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, event in subscribers:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def subscription(self) -> Iterator[asyncio.Event]:
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._subscribers.add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._subscribers.discard(entry)

    async def stream(self) -> AsyncIterator[bytes]:
        with self.subscription() as changed:
            yield b"retry: 5000\n\n"
            while not self.stopped:
                try:
                    await asyncio.wait_for(changed.wait(), timeout=KEEPALIVE)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if self.stopped:
                    return
                changed.clear()
                yield b"data: changed\n\n"
                await asyncio.sleep(MIN_INTERVAL)  # a burst of changes: one refresh
