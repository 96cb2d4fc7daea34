"""The public API: queue functions, look at the queue, wait for and cancel tasks.

Everything is validated before anything is written: bad input raises a specific
``PgbgError`` (also a ``TypeError``/``ValueError`` where that is what it is) and leaves
the database untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import socket
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import psycopg

from pgbg import db, queries, registry, storable, waiters
from pgbg.decisions import MAX_BACKOFF
from pgbg.exceptions import (
    DatabaseError,
    DatabaseUnavailable,
    EnqueueFailed,
    InvalidOption,
    InvalidTaskFunction,
    InvalidTaskId,
    NotSerializable,
    OptionOutOfRange,
    SchemaMissing,
    TaskAlreadyStarted,
    TaskFailed,
    TaskNotFound,
    UnstorableValue,
)
from pgbg.models import BackgroundTask, QueuedTask, TaskStatus

# What the columns hold (pgbg/schema.py; migration 0010 adds the CHECK constraints).
INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1  # priority, num_proc, num_of_task_type values
# Bytes of UTF-8 a name may take (the database checks the same, migration 0012): indexed
# text must fit an index row, or the insert (or the claim that indexes it) fails.
MAX_TASK_TYPE, MAX_UNIQUE_KEY = 255, 1024
MAX_LIMITS = 2048  # num_of_task_type as JSON text (migration 0014)
MAX_ATTEMPTS = 1000  # max_attempts is 1..MAX_ATTEMPTS
MAX_DELAY = 100 * 365.25 * 86400.0  # delay= (seconds): a century, well inside timestamptz

WAIT_POLL_INTERVAL = waiters.WAIT_POLL_INTERVAL  # kept for callers; set it in pgbg.waiters
POLL_ONLY_INTERVAL = waiters.POLL_ONLY_INTERVAL
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """A handle on a queued task. ``id`` is the task id."""

    id: uuid.UUID

    @property
    def status(self) -> TaskStatus:
        return self.task().status

    def task(self) -> BackgroundTask:
        """The task's row as it is now."""
        return get_task(self.id)

    def wait(self, timeout: float | None = None) -> BackgroundTask:
        return wait_task(self, timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the task; return its return value, or raise ``TaskFailed``."""
        return value_of(wait_task(self, timeout))

    async def atask(self) -> BackgroundTask:
        """``task()``, awaitable (``pgbg.aio``)."""
        from pgbg import aio

        return await aio.get_task(self.id)

    async def await_task(self, timeout: float | None = None) -> BackgroundTask:
        """``wait()``, awaitable: the row once the task is complete."""
        from pgbg import aio

        return await aio.wait_task(self.id, timeout)

    async def aget(self, timeout: float | None = None) -> Any:
        """``get()``, awaitable: the return value, or ``TaskFailed``."""
        return value_of(await self.await_task(timeout))


def value_of(task: BackgroundTask) -> Any:
    """A complete task's return value, or ``TaskFailed`` saying how it ended."""
    if task.status is not TaskStatus.SUCCEEDED:
        raise TaskFailed(f"task {task.id} {task.status.value}: {_first_line(task.error)}",
                         status=task.status.value, error=task.error)
    return task.result


def _first_line(error: str | None) -> str:
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"


# -- enqueue ------------------------------------------------------------------------

def enqueue(func: Callable[..., Any] | str, args: Sequence[Any] = (),
            kwargs: Mapping[str, Any] | None = None, *, task_type: str, priority: int = 0,
            num_proc: int = 0, num_of_task_type: Mapping[str, int] | None = None,
            connection: Any = None, timeout: float | None = None,
            max_attempts: int = 1, run_at: datetime | None = None,
            delay: float | timedelta | None = None, unique_key: str | None = None,
            unique_while_running: bool = True,
            retry_on: Sequence[type[BaseException] | str] | None = None,
            retry_backoff: float | None = None) -> Result:
    """Queue ``func(*args, **kwargs)``; the full form of every option.

    ``timeout``: seconds the task may run before it is terminated and recorded as failed
    (default: the worker's ``--task-timeout``, if any). ``max_attempts``: how many times
    the task may start; a task lost with its worker is re-queued while attempts remain.
    ``run_at`` (an aware datetime) or ``delay`` (seconds or a timedelta, database clock):
    not started before then. ``unique_key``: while a task with that key is queued (or
    running, unless ``unique_while_running=False``), return that task instead of queueing
    a second one — the database enforces it, so concurrent enqueues agree.
    A failed attempt is retried while ``max_attempts`` allows, after ``retry_backoff``
    seconds (default: the worker's), doubled per attempt, with jitter; ``retry_on`` limits
    retries to those exception classes (or their subclasses).

    ``connection``: a psycopg connection, a SQLAlchemy ``Connection`` or ``Session``, or
    any DBAPI connection. The task is then inserted in that transaction and exists only if
    it commits; otherwise pgbg commits it at once on its own connection (or joins the
    application's transaction, where an integration set one with ``db.use_connection``).
    """
    params = prepare_enqueue(
        func, args, kwargs, task_type=task_type, priority=priority, num_proc=num_proc,
        num_of_task_type=num_of_task_type, timeout=timeout, max_attempts=max_attempts,
        run_at=run_at, delay=delay, unique_key=unique_key,
        unique_while_running=unique_while_running, retry_on=retry_on,
        retry_backoff=retry_backoff)
    return run(enqueue_operation(params), connection, refused=EnqueueFailed)


def prepare_enqueue(func: Callable[..., Any] | str, args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None, *, task_type: str,
                    priority: int = 0, num_proc: int = 0,
                    num_of_task_type: Mapping[str, int] | None = None,
                    timeout: float | None = None, max_attempts: int = 1,
                    run_at: datetime | None = None, delay: float | timedelta | None = None,
                    unique_key: str | None = None, unique_while_running: bool = True,
                    retry_on: Sequence[type[BaseException] | str] | None = None,
                    retry_backoff: float | None = None) -> dict[str, Any]:
    """``enqueue``'s arguments validated and serialised: the insert's parameters. Raises
    the ``PgbgError`` that names what is wrong; touches nothing."""
    return {
        **_options(func, task_type, priority, num_proc, num_of_task_type, max_attempts,
                   timeout),
        "id": str(uuid.uuid4()), "args": _json_args(args), "kwargs": _json_kwargs(kwargs),
        **_schedule(run_at, delay), **_unique(unique_key, unique_while_running),
        **_retry(retry_on, retry_backoff),
    }


# -- running an operation (queries.Operation: the SQL, shared with pgbg.aio) -----------

def run(operation: queries.Operation[T], connection: Any = None, *, join: bool = True,
        transaction: bool = False, refused: type[DatabaseError] = DatabaseError) -> T:
    """Run ``operation`` on ``connection`` (inside the caller's transaction), else, with
    ``join``, on the application's connection (``db.use_connection``), else on pgbg's own
    connection, committed at once (in one transaction if ``transaction``). A driver's
    error becomes a ``PgbgError`` (``refused`` for a statement the database refused);
    the driver's is its cause."""
    if connection is None and join:
        connection = db.caller_connection()
        if connection is not None:  # in the application's scope (a savepoint, say)
            with database_errors(refused), db.caller_scope(connection):
                return run(operation, connection, join=False, transaction=transaction,
                           refused=refused)
    if connection is None:
        with db.shared_connection() as conn, database_errors(refused):
            if not transaction:
                return queries.run(conn, operation)
            with conn.transaction():
                return queries.run(conn, operation)
    execute = executor(connection)
    with database_errors(refused):
        if transaction and autocommitting(connection):
            with connection.transaction():
                return queries.drive(operation, lambda statement: execute(*statement[:2]))
        return queries.drive(operation, lambda statement: execute(*statement[:2]))


def enqueue_operation(params: dict[str, Any]) -> queries.Operation[Result]:
    """Insert the task ``prepare_enqueue`` described; with a ``unique_key`` a live task
    holding it is returned instead."""
    for _attempt in range(5):
        if (yield from queries.task_insert(params)):
            return Result(uuid.UUID(params["id"]))
        existing = yield from queries.task_find_unique(params["unique_key"])
        if existing is not None:
            return Result(existing)
        # the holder of the key finished in between: try to insert again
    raise InvalidOption(f"unique_key {params['unique_key']!r} keeps changing hands; try again")


@contextlib.contextmanager
def database_errors(refused: type[DatabaseError] = DatabaseError) -> Iterator[None]:
    """A driver's error as a ``PgbgError`` (the driver's is its cause): ``refused`` for a
    statement the database refused."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        raise SchemaMissing() from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the database could not be reached: {exc}") from exc
    except Exception as exc:
        if not _is_driver_error(exc):
            raise
        cause = exc.__cause__  # Django's errors wrap the driver's so
        if isinstance(cause, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
            raise SchemaMissing() from exc
        if isinstance(cause, psycopg.OperationalError):
            raise DatabaseUnavailable(f"the database could not be reached: {cause}") from exc
        raise refused(f"{(refused.__doc__ or '').strip().rstrip('.')}: "
                      f"{type(exc).__name__}: {exc}") from exc


def _is_driver_error(exc: Exception) -> bool:
    """Whether ``exc`` is a database driver's (psycopg's, SQLAlchemy's, psycopg2's, Django's)
    error. Those modules are looked up only if loaded: their errors cannot occur else."""
    if isinstance(exc, psycopg.Error):
        return True
    for module, name in (("sqlalchemy.exc", "SQLAlchemyError"), ("psycopg2", "Error"),
                         ("django.db.utils", "Error")):
        loaded = sys.modules.get(module)
        cls = getattr(loaded, name, None) if loaded is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _schedule(run_at: object, delay: object) -> dict[str, Any]:
    if run_at is not None and delay is not None:
        raise InvalidOption("pass run_at= or delay=, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime) or run_at.tzinfo is None:
            raise InvalidOption("run_at must be a timezone-aware datetime")
        try:  # a time every reader can read back: within years 1 to 9999 in UTC
            run_at.astimezone(UTC)
        except OverflowError:
            raise OptionOutOfRange(f"run_at {run_at.isoformat()} is outside years 1 to 9999 "
                                   "in UTC") from None
        return {"run_at": run_at, "delay": None}
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not 0 <= delay <= MAX_DELAY):
        raise InvalidOption(f"delay must be a number of seconds from 0 to {MAX_DELAY:.0f} "
                            f"(a century), not {_short(delay)}")
    return {"run_at": None, "delay": None if delay is None else float(delay)}


def _retry(retry_on: object, backoff: object) -> dict[str, Any]:
    names = None
    if retry_on is not None:
        if isinstance(retry_on, (str, type)) or not isinstance(retry_on, Sequence):
            raise InvalidOption("retry_on must be a list of exception classes or names")
        names = []
        for index, item in enumerate(retry_on):
            if isinstance(item, type) and issubclass(item, BaseException):
                names.append(f"{item.__module__}.{item.__qualname__}")
            elif isinstance(item, str) and item:
                storable.check_text(item, f"retry_on[{index}]")
                names.append(item if "." in item else f"builtins.{item}")
            else:
                raise InvalidOption(f"retry_on: {item!r} is not an exception class or name")
    if backoff is not None and (isinstance(backoff, bool) or not isinstance(backoff, (int, float))
                                or not 0 <= backoff <= MAX_BACKOFF):
        raise InvalidOption(f"retry_backoff must be a number of seconds from 0 to "
                            f"{MAX_BACKOFF:g}, not {_short(backoff)}")
    return {"retry_on": names, "retry_backoff": None if backoff is None else float(backoff)}


def _unique(unique_key: object, while_running: object) -> dict[str, Any]:
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
        raise InvalidOption(f"unique_key must be a non-empty string, not {unique_key!r}")
    if unique_key is not None:
        _bounded(storable.check_text(unique_key, "unique_key"), "unique_key", MAX_UNIQUE_KEY)
    if not isinstance(while_running, bool):
        raise InvalidOption("unique_while_running must be True or False")
    return {"unique_key": unique_key, "unique_running": while_running}


def enqueue_many(func: Callable[..., Any] | str, args_list: Sequence[Sequence[Any]],
                 kwargs_list: Sequence[Mapping[str, Any]] | None = None, *, task_type: str,
                 priority: int = 0, num_proc: int = 0,
                 num_of_task_type: Mapping[str, int] | None = None, connection: Any = None,
                 timeout: float | None = None, max_attempts: int = 1,
                 run_at: datetime | None = None, delay: float | timedelta | None = None,
                 retry_on: Sequence[type[BaseException] | str] | None = None,
                 retry_backoff: float | None = None) -> list[Result]:
    """Queue ``func`` once per argument set, with the same options, in a few statements
    and one notification per batch. ``kwargs_list``, if given, pairs with ``args_list``.

    Everything is validated first: one bad argument set queues nothing (the error names
    which). With ``connection=``, the tasks join the caller's transaction.
    """
    ids, batches = prepare_enqueue_many(
        func, args_list, kwargs_list, task_type=task_type, priority=priority,
        num_proc=num_proc, num_of_task_type=num_of_task_type, timeout=timeout,
        max_attempts=max_attempts, run_at=run_at, delay=delay, retry_on=retry_on,
        retry_backoff=retry_backoff)
    run(enqueue_many_operation(batches), connection, transaction=len(batches) > 1,
        refused=EnqueueFailed)
    return [Result(i) for i in ids]


def prepare_enqueue_many(func: Callable[..., Any] | str, args_list: Sequence[Sequence[Any]],
                         kwargs_list: Sequence[Mapping[str, Any]] | None = None, *,
                         task_type: str, priority: int = 0, num_proc: int = 0,
                         num_of_task_type: Mapping[str, int] | None = None,
                         timeout: float | None = None, max_attempts: int = 1,
                         run_at: datetime | None = None,
                         delay: float | timedelta | None = None,
                         retry_on: Sequence[type[BaseException] | str] | None = None,
                         retry_backoff: float | None = None
                         ) -> tuple[list[uuid.UUID], list[dict[str, Any]]]:
    """``enqueue_many``'s arguments validated and serialised: the tasks' ids and the
    batches' insert parameters. Touches nothing."""
    args_list = _calls("args_list", args_list)
    kwargs_list = None if kwargs_list is None else _calls("kwargs_list", kwargs_list)
    if kwargs_list is not None and len(kwargs_list) != len(args_list):
        raise InvalidOption(f"kwargs_list has {len(kwargs_list)} items, args_list "
                            f"{len(args_list)}")
    common = {**_options(func, task_type, priority, num_proc, num_of_task_type, max_attempts,
                         timeout), **_schedule(run_at, delay), **_retry(retry_on, retry_backoff)}
    args_values = _each_call(args_list, _args_value, (list, tuple))
    kwargs_values = None if kwargs_list is None else _each_call(kwargs_list, _kwargs_value, ())
    ids = _new_ids(len(args_values))
    hex_ids = [f"{i:032x}" for i in ids]
    batches = []
    for start in range(0, len(ids), BULK_BATCH):
        end = start + BULK_BATCH
        batches.append({
            **common, "ids": json.dumps(hex_ids[start:end]),
            "args": _json_each(args_values[start:end], start, _check_args),
            "kwargs": None if kwargs_values is None else _json_each(
                kwargs_values[start:end], start, _check_kwargs)})
    return [uuid.UUID(int=i) for i in ids], batches


def enqueue_many_operation(batches: Sequence[dict[str, Any]]) -> queries.Operation[None]:
    for batch in batches:
        yield from queries.task_insert_many(batch)


def _calls(name: str, values: object) -> list[Any]:
    """One item per call, from any iterable but a string or a mapping."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise InvalidOption(f"{name} must be a list with one item per task, not "
                            f"{type(values).__name__}")
    return list(values)


BULK_BATCH = 5000
# Version 4 (random) UUIDs, RFC 4122 variant: the bits ``uuid.uuid4()`` sets.
UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _new_ids(n: int) -> list[int]:
    """``n`` random version-4 UUIDs, as integers, from one system call (``uuid4()`` makes
    one per id, and building ``UUID`` objects from bytes costs more than the insert)."""
    random = os.urandom(16 * n)
    return [(int.from_bytes(random[i:i + 16]) & UUID4_CLEAR) | UUID4_SET
            for i in range(0, 16 * n, 16)]


def _each_call(values: Sequence[Any], check: Callable[[object], Any],
               ready: tuple[type, ...]) -> list[Any]:
    """Each call's ``args`` (or ``kwargs``) checked for shape, the failing call named; a
    list of lists and tuples is JSON-ready as it is, and is recognised in one pass of C."""
    values = list(values)  # any sequence (a deque cannot be sliced into batches)
    if ready and set(map(type, values)) <= set(ready):
        return values
    checked = []
    for index, value in enumerate(values):
        try:
            checked.append(check(value))
        except InvalidOption as exc:
            raise InvalidOption(f"call {index}: {exc}") from exc
    return checked


def _json_each(values: Sequence[Any], first: int, check: Callable[[Any], None]) -> str:
    """A batch of calls' ``args`` (or ``kwargs``) as one JSON array, each call checked by
    ``check`` (the one-call check); on failure, the failing call and argument are named."""
    positional = storable.scan(values)  # one pass over the batch: the common case
    if positional is None:
        for offset, value in enumerate(values):  # find the culprit and name it
            try:
                check(value)
            except NotSerializable as exc:
                raise type(exc)(f"call {first + offset}: {exc}") from exc
    return storable.dumps(values) if positional else json.dumps(values)


def _options(func: Callable[..., Any] | str, task_type: str, priority: int, num_proc: int,
             num_of_task_type: Mapping[str, int] | None, max_attempts: int,
             timeout: float | None) -> dict[str, Any]:
    """Every option of a task, validated and ready for the insert statement."""
    return {
        "func": function_name(func),
        "task_type": _task_type(task_type),
        "priority": _int("priority", priority),
        "num_proc": _int("num_proc", num_proc, minimum=0),
        "num_of_task_type": json.dumps(_type_limits(num_of_task_type)),
        "max_attempts": _int("max_attempts", max_attempts, minimum=1, maximum=MAX_ATTEMPTS),
        "timeout": _seconds("timeout", timeout),
    }


def run_in_background_with_limits(func: Callable[..., Any] | str, task_type: str, num_proc: int,
                                  num_of_task_type: Mapping[str, int] | None, *args: Any,
                                  **kwargs: Any) -> Result:
    """Queue ``func(*args, **kwargs)`` to start only while its limits allow.

    ``num_proc``: fewer than this many tasks of any type running (0 = no limit).
    ``num_of_task_type``: ``{type: n}``, fewer than ``n`` tasks of ``type`` running.
    ``priority=`` (higher first) is taken out of ``kwargs``.
    """
    priority = kwargs.pop("priority", 0)
    return enqueue(func, args, kwargs, task_type=task_type, priority=priority,
                   num_proc=num_proc, num_of_task_type=num_of_task_type)


def run_in_background(func: Callable[..., Any] | str, task_type: str, *args: Any,
                      **kwargs: Any) -> Result:
    """Queue ``func(*args, **kwargs)`` to run as soon as a worker slot is free."""
    return run_in_background_with_limits(func, task_type, 0, None, *args, **kwargs)


def function_name(func: Callable[..., Any] | str) -> str:
    """``module:qualname`` of a module-level function, or a clear ``InvalidTaskFunction``."""
    if isinstance(func, registry.Task):
        return func.name
    if isinstance(func, str):
        module, sep, qualname = func.partition(":")
        if not (sep and module and qualname and all(
                part.isidentifier() for part in [*module.split("."), *qualname.split(".")])):
            raise InvalidTaskFunction(
                f"{func!r} is not of the form 'package.module:function'")
        return func
    if inspect.ismethod(func):
        raise InvalidTaskFunction(
            f"{func.__qualname__} is a bound method; queue a module-level function instead")
    if not isinstance(func, types.FunctionType):
        raise InvalidTaskFunction(
            f"{func!r} is not a function; queue a module-level function")
    name = f"{func.__module__}:{func.__qualname__}"
    if func.__name__ == "<lambda>":
        raise InvalidTaskFunction("a lambda cannot be imported by a worker; "
                                  "queue a module-level function")
    if "<locals>" in func.__qualname__:
        raise InvalidTaskFunction(f"{func.__qualname__} is defined inside a function; "
                                  "a worker can only import module-level functions")
    if func.__module__ == "__main__":
        raise InvalidTaskFunction(f"{func.__qualname__} is defined in __main__, which a worker "
                                  "cannot import; move it into a module")
    return name


def _task_type(task_type: object) -> str:
    if not isinstance(task_type, str) or not task_type.strip():
        raise InvalidOption(f"task_type must be a non-empty string, not {task_type!r}")
    return _bounded(storable.check_text(task_type, "task_type"), "task_type", MAX_TASK_TYPE)


def _bounded(text: str, name: str, limit: int) -> str:
    if len(text) > limit // 4 and len(text.encode()) > limit:
        raise OptionOutOfRange(f"{name} must be at most {limit} bytes of UTF-8, not "
                               f"{len(text.encode())}")
    return text


def _int(name: str, value: object, *, minimum: int = INT_MIN, maximum: int = INT_MAX) -> int:
    """An int option within its column's range (``OptionOutOfRange`` outside it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOption(f"{name} must be an int, not {type(value).__name__} {_short(value)}")
    if value < minimum:
        raise (OptionOutOfRange if minimum == INT_MIN else InvalidOption)(
            f"{name} must be >= {minimum}, not {_short(value)}")
    if value > maximum:
        raise OptionOutOfRange(f"{name} must be <= {maximum}, not {_short(value)}")
    return int(value)


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite float or an int a float can hold."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: object) -> str:
    """``repr(value)`` for a message: an int of any size, a long value cut short."""
    if isinstance(value, int) and not -(10 ** 30) < value < 10 ** 30:
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not _finite(value):
        raise InvalidOption(f"{name} must be a positive (finite) number of seconds, "
                            f"not {_short(value)}")
    return float(value)


def _type_limits(limits: object) -> dict[str, int]:
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise InvalidOption("num_of_task_type must be a dict of {task_type: int}, "
                            f"not {type(limits).__name__}")
    for key, value in limits.items():
        if not isinstance(key, str) or not key:
            raise InvalidOption(f"num_of_task_type keys must be task type names, not {key!r}")
        problem = storable.text_problem(key)
        if problem is not None:
            raise UnstorableValue(f"num_of_task_type: key {key!r}: {problem}")
        _bounded(key, "a num_of_task_type key", MAX_TASK_TYPE)
        # the claim counts in integer: a limit past INT_MAX would stop every claim
        _int(f"num_of_task_type[{key!r}]", value, minimum=1)
    checked = {key: int(value) for key, value in limits.items()}
    # the limits are an index key (migration 0014): their JSON text, as the database
    # writes it (the same separators and escapes, keys in another order), is bounded
    size = len(json.dumps(checked, ensure_ascii=False).encode())
    if size > MAX_LIMITS:
        raise OptionOutOfRange(f"num_of_task_type must be at most {MAX_LIMITS} bytes as "
                               f"JSON, not {size} ({len(checked)} types)")
    return checked


def _args_value(args: object) -> list[Any]:
    """Positional arguments as a list; a string is not a list of them."""
    if type(args) not in (list, tuple) and (  # the common case first: ABC checks are slow
            isinstance(args, (str, bytes)) or not isinstance(args, Sequence)):
        raise InvalidOption(f"args must be a list or tuple, not {type(args).__name__}")
    return list(cast(Sequence[Any], args))


def _kwargs_value(kwargs: object) -> dict[str, Any]:
    """Keyword arguments as a dict with string keys (None: none)."""
    if kwargs is None:
        return {}
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        raise InvalidOption(f"kwargs must be a dict, not {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidOption(f"keyword argument names must be strings, not {key!r}")
    return dict(cast(Mapping[str, Any], kwargs))


def _json_args(args: object) -> str:
    """Positional arguments as JSON jsonb stores exactly (``storable``)."""
    values = _args_value(args)
    positional = storable.scan((values,))
    if positional is None:
        _check_args(values)
    return storable.dumps(values) if positional else json.dumps(values)


def _check_args(values: Sequence[Any]) -> None:
    """Refuse what jsonb cannot store exactly, naming it ``args[i]...``."""
    for index, value in enumerate(values):
        storable.check_json(value, f"args[{index}]")


def _json_kwargs(kwargs: object) -> str:
    """Keyword arguments as JSON jsonb stores exactly, named ``kwargs[...]`` when refused."""
    values = _kwargs_value(kwargs)
    positional = storable.scan((values,))
    if positional is None:
        _check_kwargs(values)
    return storable.dumps(values) if positional else json.dumps(values)


def _check_kwargs(values: Mapping[str, Any]) -> None:
    storable.check_json(values, "kwargs")


def rows(result: Any) -> list[Any]:
    """The rows of a statement's result (each indexable by position, whatever the
    caller's row factory: a mapping row becomes its values), or none if it returns none."""
    description = getattr(result, "description", None)
    if description is None and hasattr(result, "returns_rows"):
        fetched = list(result.fetchall()) if result.returns_rows else []
    else:
        fetched = list(result.fetchall()) if description else []
    return [tuple(row.values()) if isinstance(row, Mapping) else row for row in fetched]


def executor(connection: Any) -> queries.Executor:
    """Run pgbg's statement inside the caller's transaction, whatever the connection type."""
    if is_async(connection):
        raise InvalidOption(f"connection= is an async {type(connection).__name__}, which a "
                            "sync call cannot use: await pgbg.aio's functions (or a task's "
                            ".aenqueue) with it")
    if isinstance(connection, psycopg.Connection):
        return lambda sql, params: rows(connection.execute(sql, params))
    if hasattr(connection, "exec_driver_sql"):  # SQLAlchemy Connection
        return lambda sql, params: rows(connection.exec_driver_sql(sql, dict(params)))
    if hasattr(connection, "get_bind") and hasattr(connection, "connection"):  # ORM Session
        return lambda sql, params: rows(
            connection.connection().exec_driver_sql(sql, dict(params)))
    if hasattr(connection, "cursor"):  # any other DBAPI connection (psycopg2, …)
        def execute(sql: str, params: Mapping[str, Any]) -> list[Any]:
            cursor = connection.cursor()
            try:
                cursor.execute(sql, dict(params))
                return rows(cursor)
            finally:
                cursor.close()
        return execute
    raise InvalidOption(f"connection= must be a database connection or SQLAlchemy session, "
                        f"not {type(connection).__name__}")


def is_async(connection: object) -> bool:
    """Whether ``connection`` is an async one (psycopg's, SQLAlchemy's, asyncpg's, ...)."""
    return inspect.iscoroutinefunction(getattr(type(connection), "execute", None))


def autocommitting(connection: Any) -> bool:
    """Whether each statement on the caller's psycopg ``connection`` would commit alone
    (autocommit, outside a transaction block): several must then be made one."""
    return (isinstance(connection, (psycopg.Connection, psycopg.AsyncConnection))
            and connection.autocommit
            and connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)


# -- reading tasks ------------------------------------------------------------------

def task_id(task: object) -> uuid.UUID:
    """The id of a ``Result``, ``BackgroundTask``, ``QueuedTask``, UUID or id string."""
    if isinstance(task, (Result, BackgroundTask)):
        return task.id
    if isinstance(task, QueuedTask):
        task = task.task_id
    if isinstance(task, uuid.UUID):
        return task
    if isinstance(task, str):
        try:
            return uuid.UUID(task)
        except ValueError:
            raise InvalidTaskId(f"{task!r} is not a task id (a UUID)") from None
    raise InvalidTaskId(f"expected a task or task id, not {type(task).__name__}")


def get_task(task: object) -> BackgroundTask:
    """The task's row; ``TaskNotFound`` if there is none."""
    return run(get_task_operation(task_id(task)))


def get_task_operation(tid: uuid.UUID) -> queries.Operation[BackgroundTask]:
    row = yield from queries.task_get(tid)
    if row is None:
        raise TaskNotFound(f"no task with id {tid}")
    return row


def wait_task(task: object, timeout: float | None = None) -> BackgroundTask:
    """Block until the task is complete and return its row; ``TimeoutError`` on timeout.

    Every waiter of the process shares one connection (``pgbg/waiters.py``): woken by the
    completion NOTIFY, with every row re-read every few seconds and after a reconnect, so
    a missed notification or a lost connection costs latency only. Through a database
    restart it waits on, until its timeout.
    """
    tid = task_id(task)
    return waiters.wait(tid, deadline(timeout))


def deadline(timeout: object) -> float | None:
    """The monotonic time a wait of ``timeout`` seconds (None: no limit) ends."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not _finite(timeout) or timeout < 0:
        raise InvalidOption(f"timeout must be a number of seconds >= 0 (or None), "
                            f"not {_short(timeout)}")
    return time.monotonic() + float(timeout)


def get_queued_tasks(task_type: str | None = None) -> list[QueuedTask]:
    """Waiting tasks in the order workers consider them, with what each waits for.

    ``task_type`` matches exactly. ``queue_position`` is the 1-based place in the whole
    queue, so it means the same with or without the filter.
    """
    return run(queries.queue_list(queue_filter(task_type)))


def queue_filter(task_type: object) -> str | None:
    if task_type is None:
        return None
    if not isinstance(task_type, str):
        raise InvalidOption(f"task_type must be a string, not {type(task_type).__name__}")
    return storable.check_text(task_type, "task_type")


def remove_task_from_queue(task: object) -> None:
    """Remove a task that has not started (it ends as ``cancelled``), at once: not inside
    an application's transaction, as a termination is not.

    Raises ``TaskAlreadyStarted`` if it started, ``TaskNotFound`` if there is no such task.
    """
    run(remove_operation(task_id(task)), join=False)


def remove_operation(tid: uuid.UUID) -> queries.Operation[None]:
    if (yield from queries.task_cancel_queued(tid, "removed from the queue")):
        return
    status = yield from queries.task_status(tid)
    if status is None:
        raise TaskNotFound(f"no task with id {tid}")
    raise TaskAlreadyStarted(f"task {tid} already started (status: {status.value})")


def terminate_background(task: object, *, wait: bool = True,
                         timeout: float | None = None) -> BackgroundTask:
    """Stop a task, wherever its worker runs, and return its row afterwards.

    Queued: cancelled at once. Running: marked for termination and its worker told; the
    worker confirms against the row, SIGTERMs the task's process group and SIGKILLs it
    after a grace period. With ``wait`` (the default) this returns once the row is
    terminal (``TimeoutError`` after ``timeout``). A finished task is left as it is.
    It acts at once, never inside an application's transaction (whose commit it would
    otherwise wait for).
    """
    tid = task_id(task)
    deadline(timeout)  # checked before anything is done
    row = run(terminate_operation(tid, requester()), join=False)
    if wait and not row.status.is_terminal:
        return wait_task(tid, timeout)
    return row


def terminate_operation(tid: uuid.UUID, requester: str) -> queries.Operation[BackgroundTask]:
    """Cancel the task if queued, else mark it for termination; its row afterwards."""
    if not (yield from queries.task_cancel_queued(tid, "terminated before it started")):
        yield from queries.task_request_cancel(tid, requester)
    return (yield from get_task_operation(tid))


def requester() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
