"""``wait_task`` at scale: every waiter of a process shares one connection.

Two layers, so the asyncio face can reuse the first:

- ``Waits``, the bookkeeping and no I/O: which task ids are waited on, which must be read
  (new waiters, a notification, after a (re)LISTEN, at the fallback or poll tick), and
  what a read found. Times are passed in (``now``), never read.
- ``Dispatcher``, the sync driver: one daemon thread per process, started by the first
  wait, holding one connection. It LISTENs on ``pgbg_done`` (the payload is the task id),
  or, in poll-only mode (``db.listen_enabled()`` false), LISTENs to nothing and reads at
  each ``POLL_ONLY_INTERVAL``. Every read is one statement for every id due
  (``WHERE id = ANY(...)``), then one for the full rows of those that ended. After every
  successful LISTEN every waiter's row is read again, so a completion while the
  connection was lost still wakes its waiter; the ``WAIT_POLL_INTERVAL`` re-read covers a
  notification missed for any other reason.

Fork safety: a child never uses its parent's dispatcher. The pid is checked on each use,
and after ``os.fork`` the parent's connection is parked in ``db._inherited`` (kept, never
closed: closing it would end the parent's session) and a fresh dispatcher starts on the
child's first wait.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgbg import db, notify, queries
from pgbg.exceptions import DatabaseError, DatabaseUnavailable, SchemaMissing, TaskNotFound
from pgbg.models import BackgroundTask, TaskStatus

log = logging.getLogger(__name__)

WAIT_POLL_INTERVAL = 5.0  # the fallback when a completion NOTIFY is missed
POLL_ONLY_INTERVAL = 0.2  # how often the rows are read when pgbg may not LISTEN
RECONNECT_PAUSE = 0.5  # backoff between failed connection attempts, not synchronisation


# -- the bookkeeping (no I/O) ---------------------------------------------------------

@dataclass(eq=False)
class Waiter:
    """One call waiting on one task; ``wake`` is called once, when it is settled."""

    task_id: uuid.UUID
    wake: Callable[[], None]
    status: TaskStatus | None = None  # as last read; None before the first read
    row: BackgroundTask | None = None  # set once terminal
    missing: bool = False
    error: psycopg.Error | None = None
    stopped: bool = False  # its dispatcher stopped: wait again on a new one

    @property
    def settled(self) -> bool:
        return (self.row is not None or self.missing or self.error is not None
                or self.stopped)


@dataclass(frozen=True)
class Read:
    """The ids one read covers and the waiters it may settle: only those registered
    before it began (a task queued after the read's snapshot is not "not found")."""

    ids: list[uuid.UUID]
    waiters: frozenset[Waiter] = field(default_factory=frozenset)


class Waits:
    """Which ids are waited on and which are due a read; what a read found."""

    def __init__(self, interval: float) -> None:
        self.interval = interval  # the periodic read of every id
        self._by_id: dict[uuid.UUID, list[Waiter]] = {}
        self._due: set[uuid.UUID] = set()
        self._next_all = 0.0

    def __len__(self) -> int:
        return len(self._by_id)

    def ids(self) -> list[uuid.UUID]:
        return list(self._by_id)

    def count(self) -> int:
        """Waiters, not ids: two waits on one task are two."""
        return sum(map(len, self._by_id.values()))

    def add(self, waiter: Waiter) -> None:
        self._by_id.setdefault(waiter.task_id, []).append(waiter)
        self._due.add(waiter.task_id)

    def discard(self, waiter: Waiter) -> None:
        waiting = self._by_id.get(waiter.task_id)
        if waiting is not None and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._by_id[waiter.task_id]
                self._due.discard(waiter.task_id)

    def notified(self, payload: str) -> None:
        """A completion notification: its task's waiters are due a read."""
        try:
            tid = uuid.UUID(payload)
        except ValueError:
            return
        if tid in self._by_id:
            self._due.add(tid)

    def read_all(self, now: float) -> None:
        """Every id is due (after a (re)LISTEN: notifications may have been missed)."""
        self._due.update(self._by_id)
        self._next_all = now + self.interval

    def take(self, now: float) -> Read:
        """What to read now (maybe nothing); the periodic read is included when due."""
        if self._by_id and now >= self._next_all:
            self.read_all(now)
        ids, self._due = sorted(self._due), set()
        return Read(ids, frozenset(w for tid in ids for w in self._by_id.get(tid, ())))

    def delay(self, now: float) -> float | None:
        """Seconds until a read is due; None: nothing is waited on."""
        if self._due:
            return 0.0
        if not self._by_id:
            return None
        return max(0.0, self._next_all - now)

    def found(self, read: Read, statuses: Mapping[uuid.UUID, TaskStatus]) -> list[uuid.UUID]:
        """Apply a read of the statuses; the ids that ended (their rows are read next).
        A waiter whose task does not exist is settled as missing."""
        ended = []
        for tid in read.ids:
            status = statuses.get(tid)
            for waiter in self._mine(read, tid):
                if status is None:
                    waiter.missing = True
                    self._settle(waiter)
                else:
                    waiter.status = status
            if status is not None and status.is_terminal and tid in self._by_id:
                ended.append(tid)
        return ended

    def rows(self, read: Read, rows: Mapping[uuid.UUID, BackgroundTask]) -> None:
        """Settle the waiters of the ended tasks with their rows."""
        for tid, row in rows.items():
            for waiter in self._mine(read, tid):
                waiter.row = row
                self._settle(waiter)

    def failed(self, read: Read, error: psycopg.Error) -> None:
        """The read was refused (not a lost connection): its waiters raise."""
        for tid in read.ids:
            for waiter in self._mine(read, tid):
                waiter.error = error
                self._settle(waiter)

    def stop_all(self) -> None:
        for waiting in list(self._by_id.values()):
            for waiter in list(waiting):
                waiter.stopped = True
                self._settle(waiter)

    def _mine(self, read: Read, tid: uuid.UUID) -> list[Waiter]:
        return [w for w in self._by_id.get(tid, ()) if w in read.waiters]

    def _settle(self, waiter: Waiter) -> None:
        self.discard(waiter)
        waiter.wake()


# -- the sync driver ------------------------------------------------------------------

class Dispatcher:
    """This process's waiting thread and its one connection."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.listen = db.listen_enabled()
        self.waits = Waits(WAIT_POLL_INTERVAL if self.listen else POLL_ONLY_INTERVAL)
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.unavailable = False  # the last attempt to connect or read failed
        self.stopping = False
        self.thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def add(self, tid: uuid.UUID, wake: Callable[[], None]) -> Waiter:
        waiter = Waiter(tid, wake)
        with self.lock:
            if self.stopping:
                waiter.stopped = True
                return waiter
            self.waits.add(waiter)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="pgbg-waiters",
                                               daemon=True)
                self.thread.start()
            self._poke()  # under the lock: ``stop`` closes the pipe under it
        return waiter

    def discard(self, waiter: Waiter) -> None:
        with self.lock:
            self.waits.discard(waiter)

    def stop(self) -> None:
        """End the thread, close the connection; current waiters wait again elsewhere."""
        with self.lock:
            self.stopping = True
            thread = self.thread
            self.waits.stop_all()
            self._poke()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self.lock:
            if self._wake_w < 0:
                return
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1  # a late poke writes nowhere, not to a reused descriptor

    def abandon(self) -> None:
        """In a forked child: the parent's; keep its connection, never use or close it."""
        if self.conn is not None:
            db._inherited.append(self.conn)
            self.conn = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)  # the child's copies only
            except OSError:
                pass

    def _poke(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (already poked) or closed (stopped)
            pass

    def _run(self) -> None:
        try:
            while not self.stopping:
                if self.conn is None and not self._connect():
                    self._pause(RECONNECT_PAUSE)
                    continue
                try:
                    self._step()
                except psycopg.OperationalError:
                    self._lost()
        except Exception:  # pragma: no cover - a bug; the waiters wait again elsewhere
            log.exception("the waiting thread failed")
            with self.lock:
                self.stopping = True
                self.waits.stop_all()
        finally:
            if self.conn is not None and self.pid == os.getpid():
                self.conn.close()
            self.conn = None

    def _connect(self) -> bool:
        try:
            conn = db.connect()
        except DatabaseUnavailable:
            self.unavailable = True
            return False
        try:
            if self.listen:
                notify.listen(conn, notify.DONE)  # listen first, then read: nothing slips
            self.inbox = notify.Inbox(conn)
        except psycopg.OperationalError:
            conn.close()
            self.unavailable = True
            return False
        self.unavailable = False
        with self.lock:
            self.conn = conn
            self.waits.read_all(time.monotonic())
        return True

    def _lost(self) -> None:
        self.unavailable = True
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _step(self) -> None:
        assert self.conn is not None
        if self.listen:
            notes = self.inbox.take()  # also those read while the last read ran
            with self.lock:
                for note in notes:
                    self.waits.notified(note.payload)
        with self.lock:
            now = time.monotonic()
            read = self.waits.take(now)
            delay = self.waits.delay(now)
        if read.ids:
            self._read(read)
            return
        self._pause(delay, self.conn if self.listen else None)

    def _read(self, read: Read) -> None:
        assert self.conn is not None
        try:
            statuses, rows = queries.task_read_many(self.conn, read.ids)
            with self.lock:
                ended = set(self.waits.found(read, statuses))
            rows = {task_id: row for task_id, row in rows.items() if task_id in ended}
        except psycopg.OperationalError:
            raise  # reconnect; every id is read again after the LISTEN
        except psycopg.Error as exc:
            with self.lock:
                self.waits.failed(read, exc)
            return
        self.unavailable = False
        with self.lock:
            self.waits.rows(read, rows)

    def _pause(self, delay: float | None, conn: psycopg.Connection[Any] | None = None) -> None:
        """Until ``delay`` passes, a poke, or (listening) the connection is readable."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            if conn is not None:
                selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.select(delay)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass


_current: Dispatcher | None = None
_current_lock = threading.Lock()


def dispatcher() -> Dispatcher:
    """This process's dispatcher, new after a fork or a change of listening mode."""
    global _current
    with _current_lock:
        old = _current
        if old is not None and old.pid == os.getpid() and old.listen == db.listen_enabled() \
                and not old.stopping:
            return old
        _current = Dispatcher()
    if old is not None:
        if old.pid == os.getpid():
            old.stop()
        else:
            old.abandon()
    return _current


def stop() -> None:
    """Stop this process's waiting thread and close its connection (``configure`` calls
    this: the next wait connects to the database configured now)."""
    global _current
    with _current_lock:
        old, _current = _current, None
    if old is not None:
        if old.pid == os.getpid():
            old.stop()
        else:
            old.abandon()


def wait(tid: uuid.UUID, deadline: float | None) -> BackgroundTask:
    """Block until task ``tid`` is terminal and return its row (see ``pgbg.wait_task``)."""
    while True:
        current = dispatcher()
        woken = threading.Event()
        waiter = current.add(tid, woken.set)
        try:
            while not waiter.settled:
                woken.wait(_remaining(waiter, current, deadline))
        finally:
            current.discard(waiter)
        if not waiter.stopped:  # else its dispatcher stopped: wait on the new one
            return _answer(waiter)


async def wait_async(tid: uuid.UUID, deadline: float | None) -> BackgroundTask:
    """``wait``'s twin for asyncio, on the same dispatcher: its thread wakes the awaiting
    task through the loop (``call_soon_threadsafe``). Cancelling the await discards the
    waiter and nothing else."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        current = dispatcher()
        woken = asyncio.Event()

        def wake(event: asyncio.Event = woken) -> None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed: nobody awaits any more
                pass

        waiter = current.add(tid, wake)
        try:
            while not waiter.settled:
                remaining = _remaining(waiter, current, deadline)  # raises at the deadline
                try:
                    await asyncio.wait_for(woken.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            current.discard(waiter)
        if not waiter.stopped:
            return _answer(waiter)


def _remaining(waiter: Waiter, current: Dispatcher, deadline: float | None) -> float | None:
    """Seconds to wait for a wake-up before looking again; ``TimeoutError`` once the
    deadline passed and the task's state is known (or the database is unreachable)."""
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is None or remaining > 0:
        return remaining
    if current.unavailable:
        raise TimeoutError(f"task {waiter.task_id} did not complete in time "
                           "(database unreachable)")
    if waiter.status is not None:
        raise TimeoutError(f"task {waiter.task_id} did not complete in time "
                           f"(status: {waiter.status.value})")
    return 0.05  # the first read is under way: its answer decides


def _answer(waiter: Waiter) -> BackgroundTask:
    """A settled waiter's row, or the error that settled it."""
    if waiter.missing:
        raise TaskNotFound(f"no task with id {waiter.task_id}")
    if waiter.error is not None:
        if isinstance(waiter.error, (psycopg.errors.UndefinedTable,
                                     psycopg.errors.InvalidSchemaName)):
            raise SchemaMissing() from waiter.error
        raise DatabaseError(f"the database refused to read task {waiter.task_id}: "
                            f"{type(waiter.error).__name__}: {waiter.error}") from waiter.error
    assert waiter.row is not None
    return waiter.row


def waiting_count() -> int:
    """How many waits (sync and async) this process's dispatcher holds now."""
    current = _current
    if current is None or current.pid != os.getpid():
        return 0
    with current.lock:
        return current.waits.count()


def waiting_ids() -> Sequence[uuid.UUID]:
    """The ids this process's waiters wait on now (for tests and diagnostics)."""
    current = _current
    if current is None or current.pid != os.getpid():
        return []
    with current.lock:
        return current.waits.ids()


def _after_fork_in_child() -> None:
    global _current, _current_lock
    _current_lock = threading.Lock()
    if _current is not None:
        _current.abandon()
    _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)
