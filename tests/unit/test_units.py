"""Pure functions: no database."""

from __future__ import annotations

import json
import uuid

import pgbg_test_tasks as tasks
import pytest

import pgbg
from pgbg import api, child, db
from pgbg.models import TaskStatus


def test_public_api_is_exactly_all() -> None:
    for name in pgbg.__all__:
        assert hasattr(pgbg, name), name
    expected = {"run_in_background", "run_in_background_with_limits", "wait_task",
                "terminate_background", "get_current_task", "get_or_generate_task_uuid",
                "get_queued_tasks", "remove_task_from_queue", "record_task_info",
                "record_task_error_exit", "record_task_related", "enqueue", "configure",
                "Worker", "Result", "BackgroundTask", "QueuedTask", "PgbgError", "TaskFailed"}
    assert expected <= set(pgbg.__all__)


def test_function_names_round_trip() -> None:
    assert api.function_name(tasks.add) == "pgbg_test_tasks:add"
    assert child.resolve("pgbg_test_tasks:add") is tasks.add
    assert api.function_name(tasks.Holder.static) == "pgbg_test_tasks:Holder.static"
    assert child.resolve("pgbg_test_tasks:Holder.static") is tasks.Holder.static
    assert api.function_name("some.module:func") == "some.module:func"


@pytest.mark.parametrize("bad", [
    lambda: None,
    tasks.Holder().method,
    print,  # a builtin: not a Python function
    42,
    "no_colon_here",
    "mod:",
    ":func",
    "mod:not-an-identifier",
])
def test_unimportable_functions_are_refused(bad: object) -> None:
    with pytest.raises(pgbg.InvalidTaskFunction) as info:
        api.function_name(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)


def test_nested_function_is_refused_with_its_name() -> None:
    def inner() -> None:
        return None

    with pytest.raises(pgbg.InvalidTaskFunction, match="inner is defined inside a function"):
        api.function_name(inner)


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
    ("postgresql+psycopg://app:s3cret@db/app", "postgresql+psycopg://app:***@db/app"),
    ("postgresql://app@db/app", "postgresql://app@db/app"),
    ("postgresql://db/app?password=s3cret&sslmode=require",
     "postgresql://db/app?password=***&sslmode=require"),
    ("host=db password=s3cret dbname=app", "host=db password=*** dbname=app"),
])
def test_urls_are_printed_without_password(url: str, masked: str) -> None:
    assert db.mask_url(url) == masked
    assert "s3cret" not in db.mask_url(url)


@pytest.mark.parametrize(("text", "secret", "masked"), [
    ("postgresql://u:s3cr@t3pw@host/db", "t3pw", "postgresql://u:***@host/db"),
    ("postgresql://u:a@b@c@host:5432/db?sslmode=require", "a@b@c",
     "postgresql://u:***@host:5432/db?sslmode=require"),
    ("postgresql://u:p%40ss@host/db", "p%40ss", "postgresql://u:***@host/db"),
    ("postgresql://:onlypw@host/db", "onlypw", "postgresql://:***@host/db"),
    ("postgresql://u:s3cret@[::1]:5432/db", "s3cret", "postgresql://u:***@[::1]:5432/db"),
    ("host=db password='a b c' dbname=app", "a b c", "host=db password=*** dbname=app"),
    ("host=db password = 'it\\'s secret' dbname=app", "secret",
     "host=db password = *** dbname=app"),
    ('host=db password = "x y z" dbname=app', "x y z", "host=db password = *** dbname=app"),
    ("host=db PASSWORD=s3cret", "s3cret", "host=db PASSWORD=***"),
    ("user=u password= s3cret host=db", "s3cret", "user=u password= *** host=db"),
    ("postgresql:///db?user=u&password=s3cret", "s3cret", "postgresql:///db?user=u&password=***"),
    ("host=db sslpassword=s3cret", "s3cret", "host=db sslpassword=***"),
    ("PGPASSWORD=s3cret pgbg worker", "s3cret", "PGPASSWORD=*** pgbg worker"),
])
def test_every_form_of_password_is_masked(text: str, secret: str, masked: str) -> None:
    assert secret not in db.mask_url(text)
    assert db.mask_url(text) == masked


def test_the_pgpassword_value_is_masked_wherever_it_appears(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "Tr1cky-Value")
    text = 'connection failed: FATAL: role "Tr1cky-Value" does not exist'
    assert "Tr1cky-Value" not in db.mask_url(text)


def test_sqlalchemy_urls_are_accepted() -> None:
    assert db.libpq_url("postgresql+psycopg://u@h/d") == "postgresql://u@h/d"
    assert db.libpq_url("postgresql+psycopg2://u@h/d") == "postgresql://u@h/d"
    assert db.libpq_url("postgresql://u@h/d") == "postgresql://u@h/d"


@pytest.mark.parametrize("bad", ["nope", "1234", 12, None, object()])
def test_task_ids_are_checked(bad: object) -> None:
    with pytest.raises(pgbg.InvalidTaskId):
        api.task_id(bad)


def test_task_ids_accept_every_form() -> None:
    tid = uuid.uuid4()
    assert api.task_id(tid) == tid
    assert api.task_id(str(tid)) == tid
    assert api.task_id(pgbg.Result(tid)) == tid


def test_outside_a_task_the_context_functions_do_nothing() -> None:
    assert pgbg.get_current_task() is None
    generated = pgbg.get_or_generate_task_uuid()
    assert uuid.UUID(generated).version == 4
    assert pgbg.get_or_generate_task_uuid() != generated
    # no database is configured for unit tests: these must not touch one
    pgbg.record_task_info("progress")
    pgbg.record_task_error_exit("failure")
    pgbg.record_task_related("study", 1)


def test_a_spares_rehearsal_runs_nothing_and_reports_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A spare walks a task's path before its task arrives (its page copies taken off the
    task's time): the walk calls a function that does nothing, enters no task, writes
    nothing to the worker."""
    sent: list[object] = []
    monkeypatch.setattr(child.context, "report", sent.append)
    child._rehearse()
    assert sent == [] and pgbg.get_current_task() is None
    assert child._call(json.loads(child.REHEARSAL)) == (
        {"kind": "outcome", "status": "succeeded", "result": None}, 0)


def test_terminal_statuses() -> None:
    assert {s for s in TaskStatus if s.is_terminal} == {
        TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TERMINATED}


def test_every_package_is_shipped() -> None:
    """Editable installs find any package; a real install only those pyproject lists."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "pgbg").rglob(
        "__init__.py")}
    found |= {"pgbg.migrations", "pgbg.migrations.versions"}  # mapped from migrations/
    assert found == listed


@pytest.mark.parametrize(("func", "expected"), [
    ("myapp.tasks:run", True),
    ("myapp.tasks.sub:Cls.method", True),
    ("myapp.tasks:os.system", True),  # syntax only: the child checks what it resolves to
    ("myapp.tasksx:run", False),
    ("os:system", False),
    ("myapp.tasks:", False),
    ("myapp.tasks", False),
    ("myapp.tasks:run()", False),
    ("myapp.tasks:run.__globals__", True),  # identifiers; the child refuses a non-function
    ("myapp.tasks:a..b", False),
    ("myapp.tasks:a b", False),
    ("myapp..tasks:run", False),
])
def test_allowed_checks_module_and_qualname_syntax(func: str, expected: bool) -> None:
    from pgbg import decisions

    assert decisions.allowed(func, ["myapp.tasks"]) is expected


@pytest.mark.parametrize(("url", "bare"), [
    ("postgresql://u:s3cr@t@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
    ("postgresql:///db?password=s3cret&host=/tmp", "postgresql:///db?host=/tmp"),
    ("postgresql:///db?host=/tmp&password=s3cret", "postgresql:///db?host=/tmp"),
    ("postgresql://u@/db?host=/tmp", "postgresql://u@/db?host=/tmp"),
])
def test_the_environment_gets_the_url_without_its_password(url: str, bare: str) -> None:
    assert db.without_password(url) == bare


def test_the_fork_server_loads_neither_the_driver_nor_logging() -> None:
    """What the fork server imports, every fork pays for: psycopg makes its forks slower,
    logging registers fork handlers that run Python code at each one (half the rate)."""
    import subprocess
    import sys

    probe = ("import sys, pgbg.forkserver; "
             "print(sorted({'psycopg', 'logging', 'threading', 'zoneinfo'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
