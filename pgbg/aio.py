"""The API for asyncio: awaitable twins of ``pgbg``'s functions, never blocking the loop.

Each validates, serialises and runs the same statements as its sync twin: it prepares
the call with ``pgbg.api`` (``prepare_enqueue``, ...) and drives the same
``queries.Operation``, only over an async connection. So there is one rule for what is
refused and one SQL text for every statement.

``connection=`` is a psycopg ``AsyncConnection`` or a SQLAlchemy ``AsyncConnection`` /
``AsyncSession``: the task is then inserted in that transaction. Without it, pgbg uses an
async connection of its own, one per event loop, committed at once (an application's
``db.use_connection`` provider is sync and is not consulted here). ``close()`` closes the
running loop's connection (at application shutdown, say).

Waiting (``wait_task``, ``terminate_background``) shares the process's one waiting
connection with the sync waiters (``pgbg/waiters.py``): a thousand awaits in a loop are
one registration each, not a connection each.
"""

from __future__ import annotations

import asyncio
import os
import sys
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg

from pgbg import api, db, queries, waiters
from pgbg.api import Result
from pgbg.exceptions import DatabaseError, EnqueueFailed, InvalidOption
from pgbg.models import BackgroundTask, QueuedTask

T = TypeVar("T")
AsyncExecute = Callable[[queries.Statement], Awaitable[list[Any]]]


# -- the functions --------------------------------------------------------------------

async def enqueue(func: Callable[..., Any] | str, args: Sequence[Any] = (),
                  kwargs: Mapping[str, Any] | None = None, *, task_type: str,
                  priority: int = 0, num_proc: int = 0,
                  num_of_task_type: Mapping[str, int] | None = None,
                  connection: Any = None, timeout: float | None = None,
                  max_attempts: int = 1, run_at: datetime | None = None,
                  delay: float | timedelta | None = None, unique_key: str | None = None,
                  unique_while_running: bool = True,
                  retry_on: Sequence[type[BaseException] | str] | None = None,
                  retry_backoff: float | None = None) -> Result:
    """``pgbg.enqueue``, awaitable; ``connection``: an async connection or session."""
    params = api.prepare_enqueue(
        func, args, kwargs, task_type=task_type, priority=priority, num_proc=num_proc,
        num_of_task_type=num_of_task_type, timeout=timeout, max_attempts=max_attempts,
        run_at=run_at, delay=delay, unique_key=unique_key,
        unique_while_running=unique_while_running, retry_on=retry_on,
        retry_backoff=retry_backoff)
    return await run(api.enqueue_operation(params), connection, refused=EnqueueFailed)


async def enqueue_many(func: Callable[..., Any] | str, args_list: Sequence[Sequence[Any]],
                       kwargs_list: Sequence[Mapping[str, Any]] | None = None, *,
                       task_type: str, priority: int = 0, num_proc: int = 0,
                       num_of_task_type: Mapping[str, int] | None = None,
                       connection: Any = None, timeout: float | None = None,
                       max_attempts: int = 1, run_at: datetime | None = None,
                       delay: float | timedelta | None = None,
                       retry_on: Sequence[type[BaseException] | str] | None = None,
                       retry_backoff: float | None = None) -> list[Result]:
    """``pgbg.enqueue_many``, awaitable: all the tasks or none."""
    ids, batches = api.prepare_enqueue_many(
        func, args_list, kwargs_list, task_type=task_type, priority=priority,
        num_proc=num_proc, num_of_task_type=num_of_task_type, timeout=timeout,
        max_attempts=max_attempts, run_at=run_at, delay=delay, retry_on=retry_on,
        retry_backoff=retry_backoff)
    await run(api.enqueue_many_operation(batches), connection,
              transaction=len(batches) > 1, refused=EnqueueFailed)
    return [Result(i) for i in ids]


async def run_in_background_with_limits(func: Callable[..., Any] | str, task_type: str,
                                        num_proc: int,
                                        num_of_task_type: Mapping[str, int] | None,
                                        *args: Any, **kwargs: Any) -> Result:
    """``pgbg.run_in_background_with_limits``, awaitable (``priority=`` is taken out of
    ``kwargs``)."""
    priority = kwargs.pop("priority", 0)
    return await enqueue(func, args, kwargs, task_type=task_type, priority=priority,
                         num_proc=num_proc, num_of_task_type=num_of_task_type)


async def run_in_background(func: Callable[..., Any] | str, task_type: str, *args: Any,
                            **kwargs: Any) -> Result:
    """``pgbg.run_in_background``, awaitable."""
    return await run_in_background_with_limits(func, task_type, 0, None, *args, **kwargs)


async def get_task(task: object) -> BackgroundTask:
    """The task's row; ``TaskNotFound`` if there is none."""
    return await run(api.get_task_operation(api.task_id(task)))


async def get_queued_tasks(task_type: str | None = None) -> list[QueuedTask]:
    """``pgbg.get_queued_tasks``, awaitable."""
    return await run(queries.queue_list(api.queue_filter(task_type)))


async def wait_task(task: object, timeout: float | None = None) -> BackgroundTask:
    """Until the task is complete: its row (``TimeoutError`` after ``timeout`` seconds).
    Cancelling the await stops only the wait."""
    tid = api.task_id(task)
    return await waiters.wait_async(tid, api.deadline(timeout))


async def remove_task_from_queue(task: object) -> None:
    """``pgbg.remove_task_from_queue``, awaitable."""
    await run(api.remove_operation(api.task_id(task)))


async def terminate_background(task: object, *, wait: bool = True,
                               timeout: float | None = None) -> BackgroundTask:
    """``pgbg.terminate_background``, awaitable: the process group of a running task is
    killed by its worker; with ``wait``, returns once the row is terminal."""
    tid = api.task_id(task)
    api.deadline(timeout)  # checked before anything is done
    row = await run(api.terminate_operation(tid, api.requester()))
    if wait and not row.status.is_terminal:
        return await wait_task(tid, timeout)
    return row


async def close() -> None:
    """Close the running loop's own connection (the next call opens a new one)."""
    own = _owned.get(asyncio.get_running_loop())
    if own is not None:
        async with own.lock:
            await own.drop()


# -- running an operation -------------------------------------------------------------

async def run(operation: queries.Operation[T], connection: Any = None, *,
              transaction: bool = False, refused: type[DatabaseError] = DatabaseError) -> T:
    """``pgbg.api.run``'s twin: ``operation`` on ``connection`` (in its transaction), else
    on the loop's own connection, committed at once (in one transaction if asked)."""
    if connection is not None:
        execute = executor(connection)
        with api.database_errors(refused):
            if transaction and api.autocommitting(connection):
                async with connection.transaction():
                    return await drive(operation, execute)
            return await drive(operation, execute)
    own = _own()
    async with own.lock:
        with api.database_errors(refused):
            conn = await own.connection()
            try:
                if not transaction:
                    return await drive(operation, own.execute)
                async with conn.transaction():
                    return await drive(operation, own.execute)
            except psycopg.OperationalError:
                own.stale = True  # reconnect on the next call
                raise
            # cancelled mid-statement, psycopg cancels the query and the connection is idle
            # again (test_a_call_cancelled_mid_statement_leaves_the_next_one_working)


async def drive(operation: queries.Operation[T], execute: AsyncExecute) -> T:
    """``queries.drive``'s twin: each statement awaited."""
    try:
        statement = next(operation)
        while True:
            statement = operation.send(await execute(statement))
    except StopIteration as stop:
        value: T = stop.value
        return value


def executor(connection: Any) -> AsyncExecute:
    """Run a statement inside the caller's transaction, on an async connection."""
    if isinstance(connection, psycopg.AsyncConnection):
        async def execute_psycopg(statement: queries.Statement) -> list[Any]:
            cur = await connection.execute(statement.sql, statement.params)
            fetched = await cur.fetchall() if cur.description else []
            return [tuple(row.values()) if isinstance(row, Mapping) else row
                    for row in fetched]
        return execute_psycopg
    sqlalchemy_async = sys.modules.get("sqlalchemy.ext.asyncio")
    if sqlalchemy_async is not None and isinstance(connection, (
            sqlalchemy_async.AsyncConnection, sqlalchemy_async.AsyncSession)):
        async def execute_sqlalchemy(statement: queries.Statement) -> list[Any]:
            conn = (await connection.connection()
                    if isinstance(connection, sqlalchemy_async.AsyncSession) else connection)
            return api.rows(await conn.exec_driver_sql(statement.sql, dict(statement.params)))
        return execute_sqlalchemy
    if not api.is_async(connection) and (
            hasattr(connection, "cursor") or hasattr(connection, "exec_driver_sql")
            or hasattr(connection, "get_bind")):
        raise InvalidOption(f"connection= of pgbg.aio must be an async connection (psycopg "
                            f"AsyncConnection, SQLAlchemy AsyncConnection or AsyncSession), "
                            f"not a {type(connection).__name__}, which would block the "
                            "event loop: use pgbg.enqueue with it")
    raise InvalidOption(f"connection= must be an async database connection or session, "
                        f"not {type(connection).__name__}")


# -- the loop's own connection --------------------------------------------------------

@dataclass(eq=False)
class _Own:
    """One event loop's connection, one statement at a time (as ``db.shared_connection``)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: psycopg.AsyncConnection[Any] | None = None
    configured: int = -1  # db.configured() when it connected
    isolation: str | None = None  # the server's default_transaction_isolation
    stale: bool = False  # it was lost: replace it
    closer: AsyncGenerator[None, None] | None = None  # see ``_closer``

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        if (self.conn is not None and not self.conn.closed and not self.conn.broken
                and not self.stale and self.configured == db.configured()):
            return self.conn
        await self.drop()
        configured = db.configured()
        # the URL may start the embedded server: not in the loop's thread
        target, options = await asyncio.to_thread(db.connect_options, None, True, "pgbg",
                                                  None)
        with db.unavailable(target):
            conn = await psycopg.AsyncConnection.connect(target, **options)
        await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)
        self.conn, self.configured, self.isolation, self.stale = conn, configured, None, False
        if self.closer is None:  # started once per loop: the loop then tracks it
            self.closer = closer = _closer(self)
            await anext(closer)
        return conn

    async def execute(self, statement: queries.Statement) -> list[Any]:
        """On this connection; a statement that needs it at READ COMMITTED, whatever the
        server's default (``db.read_committed``'s rule)."""
        assert self.conn is not None
        conn = self.conn
        if statement.read_committed and conn.info.transaction_status == (
                psycopg.pq.TransactionStatus.IDLE):
            if self.isolation is None:
                cur = await conn.execute(
                    "SELECT current_setting('default_transaction_isolation')")
                row = await cur.fetchone()
                self.isolation = str(row[0]) if row else "read committed"
            if self.isolation != "read committed":
                async with conn.transaction():
                    return await self._execute(statement)
        return await self._execute(statement)

    async def _execute(self, statement: queries.Statement) -> list[Any]:
        assert self.conn is not None
        cur = await self.conn.execute(statement.sql, statement.params)
        return await cur.fetchall() if cur.description else []

    def abandon(self) -> None:
        """Its loop is closed: no coroutine can run there; close the socket as it is."""
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()

    async def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except psycopg.Error:  # it was broken: closed all the same
                pass


_owned: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Own] = (
    weakref.WeakKeyDictionary())


def _own() -> _Own:
    loop = asyncio.get_running_loop()
    own = _owned.get(loop)
    if own is None:
        for old, gone in [(old, o) for old, o in _owned.items() if old.is_closed()]:
            gone.abandon()  # a loop closed without shutting its async generators down
            del _owned[old]
        own = _owned[loop] = _Own()
    return own


async def _closer(own: _Own) -> AsyncGenerator[None, None]:
    """Closes ``own``'s connection when its loop shuts down: an async generator is what
    ``asyncio.run`` (and every runner built on it: uvicorn, anyio, pytest's) finalises
    before it closes the loop. A loop per call (``async_to_sync``, a script calling
    ``asyncio.run`` in a loop) thus leaves no connection behind."""
    try:
        yield
    finally:
        await own.drop()


def _after_fork_in_child() -> None:
    """A child never uses (nor closes) its parent's connections: they are parked."""
    global _owned
    for own in list(_owned.values()):
        if own.conn is not None:
            db.park(own.conn)
    _owned = weakref.WeakKeyDictionary()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "close",
    "enqueue",
    "enqueue_many",
    "get_queued_tasks",
    "get_task",
    "remove_task_from_queue",
    "run_in_background",
    "run_in_background_with_limits",
    "terminate_background",
    "wait_task",
]
