"""``@pgbg.task``: a function declared once with its defaults, queued by methods on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pgbg_test_declared as declared
import psycopg
import pytest
import sqlalchemy as sa
from conftest import Driver, WorkerProcess, count_tasks, wait_for
from sqlalchemy.orm import Session

import pgbg
from pgbg import registry


def test_the_declaration_s_defaults_reach_the_row(make_worker: Callable[..., Driver]) -> None:
    result = declared.import_study.enqueue("/data/1.dcm")
    task = pgbg.get_task(result)
    assert task.func == "pgbg_test_declared:import_study"
    assert (task.task_type, task.priority, task.num_of_task_type) == ("import", 5, {"import": 1})
    assert (task.max_attempts, task.timeout, task.retry_backoff) == (3, 600.0, 0.25)
    assert task.retry_on == ["builtins.ValueError"]
    assert (task.args, task.kwargs) == (["/data/1.dcm"], {})
    make_worker(1).until_done(result)
    assert result.get(timeout=5) == "imported /data/1.dcm"


def test_task_type_defaults_to_the_qualified_name(conn: psycopg.Connection[Any]) -> None:
    result = declared.double.enqueue(21)
    assert pgbg.get_task(result).task_type == "pgbg_test_declared.double"
    assert declared.double.task_type == "pgbg_test_declared.double"
    assert declared.double.name == "pgbg_test_declared:double"


def test_the_function_stays_callable_as_before() -> None:
    assert declared.double(4) == 8
    assert declared.import_study("x") == "imported x"
    assert declared.double.__name__ == "double" and declared.double.__doc__ is None
    assert asyncio.run(declared.async_double(3))["value"] == 6


def test_the_task_s_own_arguments_never_collide_with_options(
        make_worker: Callable[..., Driver]) -> None:
    result = declared.takes_options.enqueue(7, task_type="mine", connection="theirs")
    task = pgbg.get_task(result)
    assert task.task_type == "kw" and task.priority == 0
    assert task.kwargs == {"task_type": "mine", "connection": "theirs"}
    make_worker(1).until_done(result)
    assert result.get(timeout=5) == [7, "mine", "theirs"]


def test_using_overrides_some_options_and_leaves_the_declaration_alone(database_url: str) -> None:
    urgent = declared.import_study.using(priority=9, max_attempts=1)
    task = pgbg.get_task(urgent.enqueue("/data/2.dcm"))
    assert (task.priority, task.max_attempts, task.task_type) == (9, 1, "import")
    assert task.num_of_task_type == {"import": 1}  # not overridden: kept
    assert declared.import_study.options["priority"] == 5
    later = declared.double.using(delay=timedelta(hours=1)).enqueue(1)
    run_at = pgbg.get_task(later).run_at
    assert run_at is not None and run_at > datetime.now(UTC) + timedelta(minutes=50)
    keyed = declared.double.using(unique_key="only-one")
    assert keyed.enqueue(1).id == keyed.enqueue(2).id


def test_enqueue_joins_the_callers_transaction(database_url: str,
                                              conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(database_url) as caller:
        declared.double.using(connection=caller).enqueue(1)
        caller.rollback()
        assert count_tasks(conn) == 0
        kept = declared.double.using(connection=caller).enqueue(2)
        assert count_tasks(conn) == 0  # not committed yet: invisible
        caller.commit()
    assert pgbg.get_task(kept).args == [2]
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            declared.double.using(connection=session).enqueue(3)
            session.rollback()
        with Session(engine) as session, session.begin():
            declared.double.using(connection=session).enqueue(4)
    finally:
        engine.dispose()
    assert sorted(t.args[0] for t in pgbg.list_tasks()) == [2, 4]


def test_enqueue_many_all_or_none(conn: psycopg.Connection[Any]) -> None:
    results = declared.import_study.enqueue_many([["a"], ["b"]], [{}, {"fail": True}])
    tasks = [pgbg.get_task(r) for r in results]
    assert [(t.args, t.kwargs, t.priority, t.max_attempts) for t in tasks] == [
        (["a"], {}, 5, 3), (["b"], {"fail": True}, 5, 3)]
    assert all(t.retry_on == ["builtins.ValueError"] for t in tasks)
    with pytest.raises(pgbg.NotSerializable, match=r"call 1"):
        declared.double.enqueue_many([[1], [object()]])
    assert count_tasks(conn) == 2
    with pytest.raises(pgbg.InvalidOption, match="unique_key"):
        declared.double.using(unique_key="k").enqueue_many([[1]])
    assert count_tasks(conn) == 2


def test_aenqueue(database_url: str) -> None:
    async def queue() -> list[pgbg.Result]:
        one = await declared.double.aenqueue(5)
        many = await declared.double.using(priority=3).aenqueue_many([[6], [7]])
        return [one, *many]

    results = asyncio.run(queue())
    assert [(pgbg.get_task(r).args, pgbg.get_task(r).priority) for r in results] == [
        ([5], 0), ([6], 3), ([7], 3)]


@pytest.mark.parametrize(("options", "message"), [
    ({"priority": "high"}, "priority must be an int"),
    ({"num_of_task_type": {"import": 0}}, r"num_of_task_type\['import'\] must be >= 1"),
    ({"max_attempts": 0}, "max_attempts must be >= 1"),
    ({"timeout": -1}, "timeout must be a positive"),
    ({"retry_on": ["not a class", 3]}, "retry_on"),
    ({"task_type": ""}, "task_type must be a non-empty string"),
    ({"prority": 1}, "no option 'prority'"),
    ({"connection": None}, "belongs to one call"),
    ({"run_at": datetime.now(UTC)}, "belongs to one call"),
    ({"delay": "soon"}, "delay must be a number"),
])
def test_bad_options_fail_at_decoration_time(options: dict[str, Any], message: str) -> None:
    before = registry.declared_names()
    with pytest.raises(pgbg.InvalidOption, match=message):
        pgbg.task(**options)(declared.undeclared)
    assert registry.declared_names() == before


def test_bad_functions_fail_at_decoration_time() -> None:
    def local(x: int) -> int:
        return x

    with pytest.raises(pgbg.InvalidTaskFunction, match="inside a function"):
        pgbg.task(local)
    with pytest.raises(pgbg.InvalidTaskFunction, match="lambda"):
        pgbg.task(lambda: None)
    with pytest.raises(pgbg.InvalidOption, match="decorates a function"):
        pgbg.task("import")  # type: ignore[call-overload]
    with pytest.raises(pgbg.InvalidOption, match=r"declared with @pgbg\.task already"):
        pgbg.task(declared.double)


def test_using_checks_its_options_at_once() -> None:
    with pytest.raises(pgbg.InvalidOption, match="priority must be an int"):
        declared.double.using(priority=1.5)
    with pytest.raises(pgbg.InvalidOption, match="no option 'colour'"):
        declared.double.using(colour="red")


def test_bad_arguments_queue_nothing(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(pgbg.NotSerializable, match=r"args\[0\]"):
        declared.double.enqueue({1, 2})
    with pytest.raises(pgbg.InvalidOption, match="connection="):
        declared.double.using(connection=object()).enqueue(1)
    assert count_tasks(conn) == 0


def test_a_declared_task_may_be_queued_by_the_plain_api_too(
        make_worker: Callable[..., Driver]) -> None:
    result = pgbg.run_in_background(declared.double, "plain", 8)
    assert pgbg.get_task(result).func == "pgbg_test_declared:double"
    make_worker(1).until_done(result)
    assert result.get(timeout=5) == 16


def test_allow_accepts_a_declared_function(make_worker: Callable[..., Driver]) -> None:
    result = declared.double.enqueue(2)
    make_worker(1, allow=["pgbg_test_declared"]).until_done(result)
    assert result.get(timeout=5) == 4


def test_registered_only_refuses_undeclared_functions_without_importing_them(
        worker_process: Callable[..., WorkerProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    monkeypatch.setenv("PGBG_TEST_MARKER", str(marker))
    refused = pgbg.enqueue("pgbg_test_side_effect:run", task_type="t", max_attempts=3)
    also_refused = pgbg.enqueue(declared.undeclared, [1], task_type="t", max_attempts=3)
    ran = declared.double.enqueue(21)
    ran_async = declared.async_double.enqueue(4)
    worker_process(1, "--registered-only", "--import", "pgbg_test_declared")
    for result, func in ((refused, "pgbg_test_side_effect:run"),
                         (also_refused, "pgbg_test_declared:undeclared")):
        task = pgbg.wait_task(result, timeout=60)
        assert task.status is pgbg.TaskStatus.FAILED
        assert task.error == (f"not allowed: {func} is not declared with @pgbg.task in this "
                              "worker's task modules (--registered-only)")
        assert task.attempt == 1  # refused for good, not retried
        assert task.pid is None  # no process was started for it
    assert ran.get(timeout=60) == 42
    assert ran_async.get(timeout=60)["value"] == 8
    assert not marker.exists()  # never imported, by anyone


def test_registered_only_child_refuses_what_the_worker_let_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's own check: a name the worker's pre-check would pass is refused there
    too, without an import (the definitive check, as for --allow)."""
    from pgbg import child

    marker = tmp_path / "imported"
    monkeypatch.setenv("PGBG_TEST_MARKER", str(marker))
    with pytest.raises(pgbg.PgbgError, match="not declared"):
        child.resolve("pgbg_test_side_effect:run", None, registered_only=True)
    assert not marker.exists()
    assert child.resolve("pgbg_test_declared:double", None, True) is declared.double


def test_registered_only_needs_modules_and_stops_on_a_bad_one(
        worker_process: Callable[..., WorkerProcess]) -> None:
    with pytest.raises(pgbg.InvalidOption, match="--import"):
        pgbg.Worker(1, registered_only=True)
    with pytest.raises(pgbg.InvalidOption, match="not a module name"):
        pgbg.Worker(1, imports=["not a module"])
    worker = worker_process(1, "--registered-only", "--import", "pgbg_test_no_such_module")
    assert worker.wait(timeout=60) != 0
    wait_for(lambda: worker.logged("cannot import the task module 'pgbg_test_no_such_module': "
                                   "ModuleNotFoundError"), timeout=10)
    assert not worker.logged("Traceback")
