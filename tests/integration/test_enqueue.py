"""Enqueueing: what is written, what is refused (writing nothing), and transactions."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
import sqlalchemy as sa
from conftest import count_tasks
from sqlalchemy.orm import Session

import pgbg


def _row(conn: psycopg.Connection[Any], result: pgbg.Result) -> dict[str, Any]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute("SELECT * FROM pgbg.task WHERE id = %s", (result.id,)).fetchone()
    assert row is not None
    return row


def test_run_in_background_writes_a_queued_row(conn: psycopg.Connection[Any]) -> None:
    result = pgbg.run_in_background(tasks.echo, "import", 1, "two", flag=True, priority=7)
    row = _row(conn, result)
    assert row["func"] == "pgbg_test_tasks:echo"
    assert row["task_type"] == "import"
    assert row["args"] == [1, "two"]
    assert row["kwargs"] == {"flag": True}  # priority= is taken out, as the original did
    assert row["priority"] == 7
    assert row["status"] == "queued"
    assert (row["num_proc"], row["num_of_task_type"]) == (0, {})
    assert (row["complete"], row["completed_successfully"]) == (False, False)
    assert result.status is pgbg.TaskStatus.QUEUED


def test_run_in_background_with_limits_stores_limits(conn: psycopg.Connection[Any]) -> None:
    result = pgbg.run_in_background_with_limits(tasks.add, "query", 3, {"query": 1, "export": 2},
                                                1, 2, priority=-1)
    row = _row(conn, result)
    assert (row["num_proc"], row["num_of_task_type"], row["priority"]) == (
        3, {"query": 1, "export": 2}, -1)
    assert (row["args"], row["kwargs"]) == ([1, 2], {})


def test_enqueue_full_form_keeps_task_kwargs_apart(conn: psycopg.Connection[Any]) -> None:
    # task kwargs named like pgbg's options do not collide with them
    result = pgbg.enqueue(tasks.echo, args=[1], kwargs={"priority": "task's own", "task_type": 1},
                          task_type="t", priority=2)
    row = _row(conn, result)
    assert row["kwargs"] == {"priority": "task's own", "task_type": 1}
    assert row["priority"] == 2


def _nested() -> Any:
    def inner() -> None:
        return None
    return inner


BAD_INPUT = [
    ("lambda", lambda: pgbg.run_in_background(lambda: 1, "t"), pgbg.InvalidTaskFunction),
    ("nested", lambda: pgbg.run_in_background(_nested(), "t"), pgbg.InvalidTaskFunction),
    ("bound method", lambda: pgbg.run_in_background(tasks.Holder().method, "t"),
     pgbg.InvalidTaskFunction),
    ("non-JSON arg", lambda: pgbg.run_in_background(tasks.echo, "t", 1, datetime.date.today()),
     pgbg.NotSerializable),
    ("non-JSON kwarg", lambda: pgbg.run_in_background(tasks.echo, "t", when={1, 2}),
     pgbg.NotSerializable),
    ("NaN", lambda: pgbg.run_in_background(tasks.echo, "t", float("nan")), pgbg.NotSerializable),
    ("negative num_proc", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", -1, None),
     pgbg.InvalidOption),
    ("float num_proc", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 1.5, None),
     pgbg.InvalidOption),
    ("bool num_proc", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", True, None),
     pgbg.InvalidOption),
    ("limits not a dict", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0, [1]),
     pgbg.InvalidOption),
    ("limit key not str", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0, {1: 1}),
     pgbg.InvalidOption),
    ("limit value str", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0, {"a": "1"}),
     pgbg.InvalidOption),
    ("limit value 0", lambda: pgbg.run_in_background_with_limits(tasks.add, "t", 0, {"a": 0}),
     pgbg.InvalidOption),
    ("priority str", lambda: pgbg.run_in_background(tasks.add, "t", 1, 2, priority="high"),
     pgbg.InvalidOption),
    ("priority float", lambda: pgbg.enqueue(tasks.add, task_type="t", priority=1.0),
     pgbg.InvalidOption),
    ("empty task_type", lambda: pgbg.run_in_background(tasks.add, ""), pgbg.InvalidOption),
    ("args not a sequence", lambda: pgbg.enqueue(tasks.add, args=5, task_type="t"),
     pgbg.InvalidOption),
    ("connection not a connection", lambda: pgbg.enqueue(tasks.add, task_type="t", connection=3),
     pgbg.InvalidOption),
]


@pytest.mark.parametrize(("case", "call", "error"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_and_writes_nothing(conn: psycopg.Connection[Any], case: str,
                                                 call: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, pgbg.PgbgError)
    assert str(info.value)
    assert count_tasks(conn) == 0


def test_non_json_argument_error_names_the_argument(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TypeError, match=r"args\[1\]: date"):
        pgbg.run_in_background(tasks.echo, "t", 1, datetime.date.today())
    with pytest.raises(TypeError, match=r"kwargs\['when'\]"):
        pgbg.run_in_background(tasks.echo, "t", when=object())
    assert count_tasks(conn) == 0


# -- the caller's transaction ---------------------------------------------------------

@pytest.mark.parametrize("commit", [True, False])
def test_psycopg_connection_transaction(database_url: str, conn: psycopg.Connection[Any],
                                        commit: bool) -> None:
    with psycopg.connect(database_url) as app_conn:  # not autocommit: a transaction is open
        app_conn.execute("CREATE TABLE IF NOT EXISTS public.order_ (id int)")
        result = pgbg.enqueue(tasks.add, (1, 2), task_type="t", connection=app_conn)
        assert count_tasks(conn) == 0  # invisible until the caller commits
        if commit:
            app_conn.commit()
        else:
            app_conn.rollback()
    assert count_tasks(conn) == (1 if commit else 0)
    if commit:
        assert pgbg.get_task(result).status is pgbg.TaskStatus.QUEUED


def _sa_engine(url: str) -> sa.Engine:
    return sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool,
                            creator=lambda: psycopg.connect(url))


@pytest.mark.parametrize("commit", [True, False])
def test_sqlalchemy_session_transaction(database_url: str, conn: psycopg.Connection[Any],
                                        commit: bool) -> None:
    engine = _sa_engine(database_url)
    with Session(engine) as session:
        session.execute(sa.text("SELECT 1"))
        result = pgbg.enqueue(tasks.add, (1, 2), task_type="t", connection=session)
        assert count_tasks(conn) == 0
        if commit:
            session.commit()
        else:
            session.rollback()
    assert count_tasks(conn) == (1 if commit else 0)
    if commit:
        assert pgbg.get_task(result.id).func == "pgbg_test_tasks:add"


def test_sqlalchemy_connection_transaction(database_url: str,
                                           conn: psycopg.Connection[Any]) -> None:
    engine = _sa_engine(database_url)
    with engine.connect() as sa_conn:
        pgbg.enqueue(tasks.add, (1, 2), task_type="t", connection=sa_conn)
        sa_conn.rollback()
        pgbg.enqueue(tasks.add, (3, 4), task_type="t", connection=sa_conn)
        sa_conn.commit()
    rows = conn.execute("SELECT args FROM pgbg.task").fetchall()
    assert rows == [([3, 4],)]


def test_configure_with_an_application_engine(database_url: str,
                                              conn: psycopg.Connection[Any]) -> None:
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    pgbg.configure(engine=engine)
    result = pgbg.run_in_background(tasks.add, "t", 1, 1)
    assert pgbg.get_task(result).status is pgbg.TaskStatus.QUEUED
    assert count_tasks(conn) == 1


def test_unknown_task_is_a_clear_error(database_url: str) -> None:
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.get_task(uuid.uuid4())
    with pytest.raises(pgbg.InvalidTaskId):
        pgbg.get_task("not-a-uuid")
