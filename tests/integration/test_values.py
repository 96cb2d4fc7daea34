"""Values PostgreSQL cannot store are refused before any SQL; the rest round-trip exactly.

Issue 12: NUL and lone surrogates in text, numbers beyond their column, non-str dict keys,
-0.0, ints past Python's 4300-digit limit and over-deep nesting are refused at
enqueue (writing nothing, leaving a caller's transaction usable) and as return values
(the task fails saying why). Floats come back from jsonb as the same float.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
import sqlalchemy as sa
from conftest import Driver, count_tasks
from sqlalchemy.orm import Session

import pgbg
from pgbg import api
from pgbg.exceptions import OptionOutOfRange, UnstorableValue

DEEP: Any = []
for _ in range(1000):
    DEEP = [DEEP]

# (case, call, error class, what the message must name)
REFUSED: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("NUL in an arg", lambda: pgbg.run_in_background(tasks.echo, "t", 1, {"x": "a\x00"}),
     UnstorableValue, r"args[1]['x']: strings cannot hold NUL"),
    ("NUL in a kwarg", lambda: pgbg.run_in_background(tasks.echo, "t", k="\x00"),
     UnstorableValue, r"kwargs['k']: strings cannot hold NUL"),
    ("NUL in a kwarg name", lambda: pgbg.enqueue(tasks.echo, kwargs={"a\x00": 1}, task_type="t"),
     UnstorableValue, "kwargs: key 'a\\x00'"),
    ("NUL in a nested key", lambda: pgbg.enqueue(tasks.echo, [{"a\x00": 1}], task_type="t"),
     UnstorableValue, "args[0]: key 'a\\x00'"),
    ("lone surrogate", lambda: pgbg.run_in_background(tasks.echo, "t", ["\ud800"]),
     UnstorableValue, "args[0][0]: strings cannot hold a lone surrogate"),
    ("int dict key", lambda: pgbg.run_in_background(tasks.echo, "t", {1: "one"}),
     UnstorableValue, "args[0]: key 1"),
    ("None dict key", lambda: pgbg.enqueue(tasks.echo, [{"a": {None: 1}}], task_type="t"),
     UnstorableValue, "args[0]['a']: key None"),
    ("negative zero", lambda: pgbg.run_in_background(tasks.echo, "t", -0.0),
     UnstorableValue, "args[0]: -0.0"),
    ("huge int", lambda: pgbg.run_in_background(tasks.echo, "t", 10 ** 4300),
     UnstorableValue, "args[0]: an int of more than 4300 digits"),
    ("huge negative int", lambda: pgbg.run_in_background(tasks.echo, "t", x=-(10 ** 5000)),
     UnstorableValue, "kwargs['x']: an int of more than 4300 digits"),
    ("too deep", lambda: pgbg.run_in_background(tasks.echo, "t", DEEP),
     UnstorableValue, "args[0]"),
    ("infinity", lambda: pgbg.run_in_background(tasks.echo, "t", [float("inf")]),
     UnstorableValue, "args[0][0]"),
    ("NUL in task_type", lambda: pgbg.run_in_background(tasks.add, "a\x00b", 1, 2),
     UnstorableValue, "task_type: strings cannot hold NUL"),
    ("surrogate in task_type", lambda: pgbg.enqueue(tasks.add, task_type="\udc00"),
     UnstorableValue, "task_type: strings cannot hold a lone surrogate"),
    ("NUL in a limit key",
     lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0, {"a\x00": 1}),
     UnstorableValue, "num_of_task_type: key 'a\\x00'"),
    ("NUL in unique_key", lambda: pgbg.enqueue(tasks.add, task_type="t", unique_key="k\x00"),
     UnstorableValue, "unique_key: strings cannot hold NUL"),
    ("NUL in retry_on", lambda: pgbg.enqueue(tasks.add, task_type="t", retry_on=["Err\x00"]),
     UnstorableValue, "retry_on[0]: strings cannot hold NUL"),
    ("priority too big", lambda: pgbg.run_in_background(tasks.add, "t", priority=2 ** 31),
     OptionOutOfRange, "priority"),
    ("priority too small", lambda: pgbg.enqueue(tasks.add, task_type="t", priority=-(2 ** 31) - 1),
     OptionOutOfRange, "priority"),
    ("num_proc too big",
     lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 2 ** 31, None),
     OptionOutOfRange, "num_proc"),
    ("type limit too big",
     lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0, {"a": 2 ** 32}),
     OptionOutOfRange, "num_of_task_type['a']"),
    ("limits past their index",
     lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0,
                                                {f"type-{i}": 1 for i in range(200)}),
     OptionOutOfRange, "num_of_task_type must be at most 2048 bytes as JSON"),
    ("max_attempts too big", lambda: pgbg.enqueue(tasks.add, task_type="t", max_attempts=1001),
     OptionOutOfRange, "max_attempts"),
    ("timeout beyond float", lambda: pgbg.enqueue(tasks.add, task_type="t", timeout=10 ** 400),
     pgbg.InvalidOption, "timeout"),
    ("delay beyond a timestamp", lambda: pgbg.enqueue(tasks.add, task_type="t", delay=1e300),
     pgbg.InvalidOption, "delay"),
    ("retry_backoff too big", lambda: pgbg.enqueue(tasks.add, task_type="t", retry_backoff=3601),
     pgbg.InvalidOption, "retry_backoff"),
    ("retry_backoff beyond float",
     lambda: pgbg.enqueue(tasks.add, task_type="t", retry_backoff=10 ** 400),
     pgbg.InvalidOption, "retry_backoff"),
    ("enqueue_many: NUL",
     lambda: pgbg.enqueue_many(tasks.echo, [[1], ["a\x00"]], task_type="t"),
     UnstorableValue, "call 1: args[0]: strings cannot hold NUL"),
    ("enqueue_many: kwargs key",
     lambda: pgbg.enqueue_many(tasks.echo, [[1]], [{"k": {2: 1}}], task_type="t"),
     UnstorableValue, "call 0: kwargs['k']: key 2"),
    ("enqueue_many: max_attempts",
     lambda: pgbg.enqueue_many(tasks.echo, [[1]], task_type="t", max_attempts=2 ** 31),
     OptionOutOfRange, "max_attempts"),
]


@pytest.mark.parametrize(("case", "call", "error", "names"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_unstorable_values_are_refused_naming_the_argument(
        conn: psycopg.Connection[Any], case: str, call: Callable[[], Any],
        error: type[Exception], names: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, pgbg.PgbgError)
    assert isinstance(info.value, (TypeError, ValueError))
    assert names in str(info.value)
    assert count_tasks(conn) == 0


PERIODIC_REFUSED: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("NUL in an arg", {"args": ["a\x00"]}, UnstorableValue, "args[0]"),
    ("int key in a kwarg", {"kwargs": {"k": {1: 1}}}, UnstorableValue, "kwargs['k']: key 1"),
    ("NUL in the name", {"name": "r\x00"}, UnstorableValue, "name: strings cannot hold NUL"),
    ("type limit too big", {"num_of_task_type": {"a": 2 ** 31}}, OptionOutOfRange,
     "num_of_task_type['a']"),
    ("too many type limits", {"num_of_task_type": {f"type-{i}": 1 for i in range(200)}},
     OptionOutOfRange, "num_of_task_type must be at most 2048 bytes"),
    ("priority too big", {"priority": 2 ** 40}, OptionOutOfRange, "priority"),
    ("max_attempts too big", {"max_attempts": 10 ** 6}, OptionOutOfRange, "max_attempts"),
    ("retry_backoff inf", {"retry_backoff": float("inf")}, pgbg.InvalidOption, "retry_backoff"),
    ("every beyond a timestamp", {"every": 1e300}, pgbg.InvalidOption, "every"),
]


@pytest.mark.parametrize(("case", "options", "error", "names"), PERIODIC_REFUSED,
                         ids=[c[0] for c in PERIODIC_REFUSED])
def test_periodic_declarations_refuse_unstorable_values(
        conn: psycopg.Connection[Any], case: str, options: dict[str, Any],
        error: type[Exception], names: str) -> None:
    options = {"name": "report", "func": tasks.echo, "every": 60, **options}
    with pytest.raises(error) as info:
        pgbg.add_periodic(**options)
    assert names in str(info.value)
    assert pgbg.list_periodic() == []


def test_a_refused_enqueue_leaves_a_psycopg_transaction_usable(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url) as app_conn:  # a transaction is open
        app_conn.execute("SELECT 1")
        for bad in ({"args": ["a\x00"]}, {"kwargs": {"k": {1: 2}}}, {"priority": 2 ** 31},
                    {"args": [10 ** 5000]}, {"unique_key": "\x00"}):
            with pytest.raises(pgbg.PgbgError):
                pgbg.enqueue(tasks.echo, task_type="t", connection=app_conn,
                             **{"args": (), **bad})
        assert app_conn.execute("SELECT 41 + 1").fetchone() == (42,)
        pgbg.enqueue(tasks.echo, [1], task_type="t", connection=app_conn)
        app_conn.commit()
    assert count_tasks(conn) == 1


def test_a_refused_enqueue_leaves_a_sqlalchemy_session_usable(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    engine = sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool,
                              creator=lambda: psycopg.connect(database_url))
    with Session(engine) as session:
        session.execute(sa.text("SELECT 1"))
        with pytest.raises(UnstorableValue):
            pgbg.enqueue(tasks.echo, ["\ud800"], task_type="t", connection=session)
        with pytest.raises(OptionOutOfRange):
            pgbg.enqueue_many(tasks.echo, [[1]], task_type="t", num_proc=2 ** 31,
                              connection=session)
        assert session.execute(sa.text("SELECT 41 + 1")).scalar() == 42
        pgbg.enqueue(tasks.echo, [1], task_type="t", connection=session)
        session.commit()
    engine.dispose()
    assert count_tasks(conn) == 1


def test_a_database_error_in_enqueue_is_a_pgbg_error(
        database_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url) as app_conn:
        with pytest.raises(psycopg.Error):
            app_conn.execute("SELECT 1 / 0")  # the caller's transaction is now aborted
        with pytest.raises(pgbg.PgbgError) as info:
            pgbg.enqueue(tasks.echo, [1], task_type="t", connection=app_conn)
        assert isinstance(info.value.__cause__, psycopg.Error)
        with pytest.raises(pgbg.PgbgError):
            pgbg.enqueue_many(tasks.echo, [[1]], task_type="t", connection=app_conn)
        app_conn.rollback()
    assert count_tasks(conn) == 0


EXACT_FLOATS = [1e16, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 1.5e-07, 0.1, 1.0,
                123456789012345678.0, 1.7976931348623157e308, -2.5e-10, 0.0]


def _row_args(conn: psycopg.Connection[Any], result: pgbg.Result) -> Any:
    row = conn.execute("SELECT args, kwargs FROM pgbg.task WHERE id = %s",
                       (result.id,)).fetchone()
    assert row is not None
    return row


def test_floats_and_big_ints_round_trip_exactly_through_jsonb(
        conn: psycopg.Connection[Any]) -> None:
    big = 10 ** 4300 - 1  # 4300 digits: the most Python reads back by default
    result = pgbg.enqueue(tasks.echo, [EXACT_FLOATS, big, -big], {"f": 1e16}, task_type="t")
    args, kwargs = _row_args(conn, result)
    assert [repr(f) for f in args[0]] == [repr(f) for f in EXACT_FLOATS]
    assert all(type(f) is float for f in args[0])
    assert args[1:] == [big, -big]
    assert type(kwargs["f"]) is float and kwargs["f"] == 1e16
    many = pgbg.enqueue_many(tasks.echo, [[1e16], [1e308]], [{"x": 5e-324}, {}], task_type="t")
    assert _row_args(conn, many[0]) == ([1e16], {"x": 5e-324})
    assert type(_row_args(conn, many[1])[0][0]) is float


def test_float_results_come_back_exactly(make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(tasks.received, "t", EXACT_FLOATS)
    make_worker(1).until_done(result)
    value = result.get(timeout=5)
    assert [repr(f) for f in value] == [repr(f) for f in EXACT_FLOATS]
    assert all(type(f) is float for f in value)
    info = pgbg.get_task(result).info  # what the function received: floats, the same ones
    assert info is not None and json.loads(info) == tasks._shape(EXACT_FLOATS)


@pytest.mark.parametrize("name", list(tasks.UNSTORABLE_RESULTS))
def test_an_unstorable_return_value_fails_the_task_saying_why(
        make_worker: Callable[..., Driver], name: str) -> None:
    result = pgbg.run_in_background(tasks.returns, "t", name)
    ordinary = pgbg.run_in_background(tasks.add, "t", 1, 2)
    driver = make_worker(1)
    driver.until_done(result, ordinary)
    task = pgbg.get_task(result)
    assert task.status is pgbg.TaskStatus.FAILED
    assert task.error is not None
    assert task.error.startswith("the return value cannot be stored: "), task.error
    assert task.result is None
    assert pgbg.get_task(ordinary).result == 3  # the worker went on


def test_enqueue_without_the_schema_says_so(database_url: str,
                                            conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP SCHEMA pgbg CASCADE")
    with pytest.raises(pgbg.SchemaMissing):
        pgbg.enqueue(tasks.echo, [1], task_type="t")
    with psycopg.connect(database_url) as app_conn, pytest.raises(pgbg.SchemaMissing):
        pgbg.enqueue_many(tasks.echo, [[1]], task_type="t", connection=app_conn)


def test_limits_are_measured_as_the_database_measures_them(conn: psycopg.Connection[Any]) -> None:
    """The bound on ``num_of_task_type`` (an index key) is the database's own: limits at it,
    in keys that need escapes and multi-byte characters, are stored; one byte more is not."""
    keys = ['q"uote', "back\\slash", "tab\there", "é-accent", "日本", "z" * 200]
    limits = {k: 2 ** 31 - 1 for k in keys}

    def size(limits: dict[str, int]) -> int:
        return len(json.dumps(limits, ensure_ascii=False).encode())

    while api.MAX_LIMITS - size(limits) - 7 > 255:  # a key of n bytes adds n + 7: , "": 1
        limits[f"{len(limits):04}" + "p" * 196] = 1
    last = "f" * (api.MAX_LIMITS - size(limits) - 7)
    pgbg.run_in_background_with_limits(tasks.add, "t", 0, {**limits, last: 1})
    stored = conn.execute("SELECT octet_length(num_of_task_type::text) FROM pgbg.task").fetchone()
    assert stored == (api.MAX_LIMITS,)
    with pytest.raises(OptionOutOfRange):
        pgbg.run_in_background_with_limits(tasks.add, "t", 0, {**limits, last + "f": 1})
    assert count_tasks(conn) == 1
