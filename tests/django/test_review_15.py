"""Review of issue 15 (pgbg.contrib.django): each test shows one break and fails on the
code as reviewed."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterator
from typing import Any

from pgbg_django_fixtures import (  # noqa: F401
    _admin,
    count,
    django_db,
    django_template,
    manage,
    site_worker,
)

import pgbg_review15_tasks as review_tasks
import psycopg
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections, transaction
from django.tasks import TaskResultStatus, task_backends
from django.test import Client, override_settings
from pgbg_django_testapp import tasks

import pgbg
from pgbg.contrib.django.models import Task
from studies.models import Study

BACKEND = "pgbg.contrib.django.PgbgBackend"


class Rollback(Exception):
    pass


def _drop_pgbg_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA pgbg CASCADE")


# -- 1. a database error while queueing inside atomic() --------------------------------

def test_a_database_error_inside_atomic_is_the_same_clear_pgbg_error_as_outside(
        django_db: str) -> None:
    """Outside atomic() a missing schema is pgbg's SchemaMissing ("run pgbg migrate");
    inside atomic() (the same call, on Django's connection) it is Django's raw
    ProgrammingError 'relation "pgbg.task" does not exist': pgbg's error mapping
    (api.database_errors) does not recognise django.db.utils errors."""
    _drop_pgbg_schema(django_db)
    with pytest.raises(pgbg.SchemaMissing):
        tasks.add.enqueue(1, 2)
    with pytest.raises(Rollback), transaction.atomic():
        with pytest.raises(pgbg.SchemaMissing):
            tasks.add.enqueue(1, 2)
        raise Rollback


def test_a_failed_enqueue_inside_atomic_does_not_abort_the_callers_transaction(
        django_db: str) -> None:
    """The caller catches the enqueue's error and carries on: its transaction must still
    work. pgbg runs its INSERT straight in the caller's transaction (no savepoint), so
    every later statement fails with 'current transaction is aborted'."""
    _drop_pgbg_schema(django_db)
    with pytest.raises(Rollback), transaction.atomic():
        Study.objects.create(accession="kept", series=1)
        with pytest.raises(Exception):  # noqa: B017 - whatever error: see the test above
            tasks.add.enqueue(1, 2)
        assert Study.objects.count() == 1  # InternalError: current transaction is aborted
        raise Rollback


# -- 2. OPTIONS["database"]: a backend on another alias ---------------------------------

@pytest.fixture
def other_db(server_url: str, django_template: str, django_db: str) -> Iterator[str]:
    """A second alias, "other", on a migrated database of its own."""
    name = f"pgbg_django_other_{os.getpid()}"
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}"')
    _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{django_template}"')
    settings.DATABASES["other"] = dict(settings.DATABASES["default"], NAME=name)
    connections.settings["other"] = dict(copy.deepcopy(connections.settings["default"]),
                                         NAME=name)
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        connections["other"].close()
        connections.settings.pop("other", None)
        settings.DATABASES.pop("other", None)
        _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_backends_database_option_holds_outside_atomic_and_for_get_result(
        django_db: str, other_db: str) -> None:
    """TASKS OPTIONS {"database": "other"}: inside atomic(using="other") the task goes to
    "other"; outside atomic() the same backend writes it into PGBG_DATABASE ("default"),
    and get_result reads "default", so it cannot find the task it queued in "other"."""
    with override_settings(TASKS={"default": {"BACKEND": BACKEND,
                                              "OPTIONS": {"database": "other"}}}):
        with transaction.atomic(using="other"):
            inside = tasks.add.enqueue(1, 2)
        outside = tasks.add.enqueue(3, 4)
        assert count(django_db) == 0, "a task of the 'other' backend went to 'default'"
        assert count(other_db) == 2
        assert tasks.add.get_result(inside.id).args == [1, 2]  # TaskResultDoesNotExist
        assert tasks.add.get_result(outside.id).args == [3, 4]


# -- 3. the unmanaged models: "the ORM cannot write pgbg's rows" ------------------------

def test_the_orm_cannot_update_or_delete_pgbgs_rows(django_db: str) -> None:
    """Task.save/delete are refused, but QuerySet.update and QuerySet.delete go straight
    to pgbg.task: a queued task is marked succeeded (a worker's task could be changed
    under it), or its row deleted, with no error."""
    queued = tasks.add.enqueue(1, 2)
    with pytest.raises(TypeError):
        Task.objects.filter(id=queued.id).update(status="succeeded")
    assert pgbg.get_task(queued.id).status is pgbg.TaskStatus.QUEUED
    with pytest.raises(TypeError):
        Task.objects.filter(id=queued.id).delete()
    assert count(django_db) == 1


# -- 4. TaskResult fidelity ---------------------------------------------------------------

def test_enqueue_with_a_held_unique_key_returns_the_holding_tasks_result(
        django_db: str) -> None:
    """The second enqueue returns the live task holding the key (same id), but the
    TaskResult it returns describes the call that was *not* queued: args [9, 9], where
    the task (and get_result) has [1, 1]."""
    first = tasks.add.using(unique_key="study-1").enqueue(1, 1)
    second = tasks.add.using(unique_key="study-1").enqueue(9, 9)
    assert second.id == first.id
    assert second.args == tasks.add.get_result(second.id).args == [1, 1]


def test_get_result_of_a_django_task_queued_with_pgbgs_wider_priority(
        django_db: str) -> None:
    """pgbg's own API (OpenREM-style code, unchanged) may queue the Django task's
    function with any int priority; get_result then raises InvalidTask ("priority must be
    a whole number between -100 and 100"), from rebuilding the Task, instead of a
    result."""
    queued = pgbg.enqueue("pgbg_django_testapp.tasks:add", [1, 2], task_type="adds",
                          priority=500)
    result = task_backends["default"].get_result(str(queued.id))
    assert result.status is TaskResultStatus.READY and result.args == [1, 2]


# -- 5. the admin and the example site with hostile input -------------------------------

def _superuser_client() -> Client:
    user = User.objects.create_superuser("root", "root@example.org", "x")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_the_admin_status_filter_with_a_bogus_value_is_not_a_server_error(
        django_db: str) -> None:
    """?status__exact=bogus reaches PostgreSQL's enum pgbg.task_status: DataError, 500
    (for a plain choices field Django shows an empty list or ?e=1)."""
    tasks.add.enqueue(1, 2)
    client = _superuser_client()
    response = client.get("/admin/pgbg/task/", {"status__exact": "bogus"})
    assert response.status_code in (200, 302), response.status_code


def test_the_example_sites_terminate_of_an_unknown_task_is_not_a_server_error(
        django_db: str) -> None:
    """POST /tasks/<random uuid>/terminate/: pgbg.TaskNotFound escapes the view (500)."""
    client = _superuser_client()
    response = client.post(f"/tasks/{uuid.uuid4()}/terminate/")
    assert response.status_code in (302, 404), response.status_code


def test_the_example_sites_import_view_with_a_bad_series_is_not_a_server_error(
        django_db: str) -> None:
    """POST /imports/ series=x: int("x") raises ValueError in the view (500)."""
    client = _superuser_client()
    response = client.post("/imports/", {"accession": "A-1", "series": "x"})
    assert response.status_code in (302, 400), response.status_code
    assert count(django_db) == 0 and not Study.objects.exists()


# -- 6. Django's parallel test runner -----------------------------------------------------

def test_the_sites_tests_under_the_parallel_test_runner_use_each_workers_database(
        django_db: str) -> None:
    """manage.py test --parallel 2: each worker process runs on its clone of the test
    database (test_..._1, test_..._2), but pgbg stays pointed at the original test
    database (configured at ready() / post_migrate, which workers do not run), so pgbg's
    own connection (everything outside atomic(): list_tasks, terminate, a
    TransactionTestCase's tasks) reads and writes another database, shared by all."""
    tested = manage(django_db, "test", "pgbg_review15_sitetests", "--parallel", "2",
                    "--noinput", "-v", "2")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "Ran 2 tests" in tested.stderr


# -- 7. the worker ----------------------------------------------------------------------

def test_a_registered_only_worker_runs_the_django_tasks_of_its_import_modules(
        django_db: str, site_worker: Any) -> None:
    """manage.py pgbg worker --registered-only --import myapp.tasks: a django.tasks task
    declared (@task) in the imported module is refused "not declared with @pgbg.task", for
    good; with --allow refused too (README): a Django site cannot run its own tasks on a
    worker hardened either way."""
    site_worker(1, "--registered-only", "--import", "pgbg_review15_tasks")
    result = review_tasks.returns.enqueue(5)
    pgbg.wait_task(result.id, 60)
    result.refresh()
    assert result.status is TaskResultStatus.SUCCESSFUL, result.errors[0].traceback
    assert result.return_value == 5


# -- 8. Django's transaction when it is not an atomic() block ----------------------------

def test_a_task_queued_with_autocommit_off_rolls_back_with_djangos_transaction(
        django_db: str) -> None:
    """transaction.set_autocommit(False) opens Django's transaction without atomic():
    pgbg only joins when connection.in_atomic_block, so the task is committed at once on
    pgbg's own connection and survives transaction.rollback() (the study does not)."""
    transaction.set_autocommit(False)
    try:
        Study.objects.create(accession="M-1", series=1)
        tasks.add.enqueue(1, 2)
        pgbg.run_in_background("studies.tasks:import_study_now", "import", 1)
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert not Study.objects.exists()
    assert count(django_db) == 0, "the tasks outlived the transaction they were queued in"


# -- 9. PGBG_DATABASE on an alias other than "default" -----------------------------------

def test_the_models_and_the_admin_read_pgbg_database_not_default(
        django_db: str, other_db: str) -> None:
    """PGBG_DATABASE = "other": pgbg queues there, but Task (admin, ORM) has no database
    router and reads "default" — here a database with pgbg's schema too, so the admin
    silently lists another database's tasks (and on a non-pgbg default, errors)."""
    from pgbg.contrib.django import transactions

    with override_settings(PGBG_DATABASE="other"):
        transactions.install("other")
        try:
            queued = pgbg.run_in_background("studies.tasks:import_study_now", "import", 1)
            assert count(other_db) == 1 and count(django_db) == 0
            assert Task.objects.filter(id=queued.id).exists()
        finally:
            transactions.install("default")


# -- 10. manage.py pgbg and Django's own command-line options ---------------------------

@pytest.mark.parametrize("where", ["after", "before"])
def test_manage_py_pgbg_accepts_djangos_settings_option(django_db: str, where: str) -> None:
    """django-admin pgbg worker --settings=mysite.settings (how a deployment without
    DJANGO_SETTINGS_MODULE starts it, e.g. under systemd): Django applies --settings, then
    the command hands all of argv to pgbg's parser: "No such option: --settings"."""
    from pgbg_django_fixtures import SETTINGS

    option = f"--settings={SETTINGS}"
    args = ["pgbg", "ls", "--json", option] if where == "after" else \
        ["pgbg", option, "ls", "--json"]
    listed = manage(django_db, *args)
    assert listed.returncode == 0, listed.stderr[-500:]


def test_the_admin_change_page_shows_every_field_retry_on_included(django_db: str) -> None:
    """The issue: "the change page shows every field". The Task model has no retry_on
    (pgbg.task.retry_on, text[]), so a task's retry rule is not shown anywhere."""
    queued = pgbg.enqueue("studies.tasks:import_study_now", [1], task_type="import",
                          max_attempts=3, retry_on=["myapp.errors.Transient"])
    client = _superuser_client()
    page = client.get(f"/admin/pgbg/task/{queued.id}/change/")
    assert page.status_code == 200
    assert b"myapp.errors.Transient" in page.content


def test_task_finished_signal_agrees_with_the_recorded_outcome(
        django_db: str, site_worker: Any, tmp_path: Any) -> None:
    """PgbgTask.__call__ sends task_finished(status=SUCCESSFUL) as soon as the function
    returns, before pgbg stores the value; a value jsonb cannot hold (NUL in a string)
    then fails the task ("the return value cannot be stored"): receivers were told
    SUCCESSFUL for a task whose TaskResult is FAILED."""
    signals = tmp_path / "signals"
    site_worker(1, REVIEW15_SIGNALS=str(signals))
    result = review_tasks.returns_unstorable.enqueue("nul")
    pgbg.wait_task(result.id, 60)
    result.refresh()
    assert result.status is TaskResultStatus.FAILED
    assert "cannot be stored" in result.errors[0].traceback
    assert signals.read_text().split() == [result.id, "FAILED"]


def test_each_child_opens_its_own_connection_with_djangos_connection_pool(
        django_db: str) -> None:
    """DATABASES OPTIONS {"pool": ...} (Django 5.1+): the pool lives in the class attribute
    DatabaseWrapper._connection_pools, not in connections._connections, which is all that
    forking.forget_connections resets. The fork server preloads a task module that
    queries at import (so it opens the pool); every child forked after then takes a
    connection from that inherited pool: the fork server's sessions, shared by children.
    Observed: the task fails with OperationalError "connection socket closed"."""
    pytest.importorskip("psycopg_pool")
    import subprocess
    import sys

    from pgbg_django_fixtures import MANAGE, SITE, site_env

    from pgbg_django_testapp import eager

    env = {**site_env(django_db), "DJANGO_SETTINGS_MODULE": "pgbg_review15_pool_settings"}
    worker = subprocess.Popen([sys.executable, str(MANAGE), "pgbg", "worker", "-c", "1",
                               "--poll-interval", "1"], env=env, cwd=SITE,
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = []
        for _ in range(4):  # one at a time: the fork server preloads eager after the first
            result = eager.backend_pid.enqueue()
            pgbg.wait_task(result.id, 60)
            result.refresh()
            assert result.status is TaskResultStatus.SUCCESSFUL, result.errors
            seen.append(result.return_value)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert len({value["pid"] for value in seen}) == 4
    assert len({value["backend_pid"] for value in seen}) == 4, seen  # never a shared session


def test_transaction_test_case_flush_removes_pgbgs_tasks_too(django_db: str) -> None:
    """TransactionTestCase flushes every table between tests, but pgbg's tables belong to
    unmanaged models, which flush skips: the next test (and `manage.py flush` in general)
    keeps the previous test's queued tasks, pointing at studies that no longer exist."""
    tested = manage(django_db, "test", "pgbg_review15_flushtests", "--noinput", "-v", "2")
    # not the exit code: the runner's teardown fails on its own (the next test)
    assert "Ran 2 tests" in tested.stderr, tested.stderr[-2000:]
    assert "FAIL: test_b_starts_from_an_empty_database" not in tested.stderr, \
        tested.stderr[-2000:]


def test_the_test_runner_can_destroy_its_database_after_pgbg_was_used(
        django_db: str) -> None:
    """One passing TransactionTestCase that queues a task outside atomic(): pgbg's own
    shared connection to the test database stays open, so the runner's DROP DATABASE
    fails ("is being accessed by other users") and manage.py test exits 1 although every
    test passed."""
    tested = manage(django_db, "test", "pgbg_review15_teardowntests", "--noinput")
    assert "being accessed by other users" not in tested.stderr, tested.stderr[-1500:]
    assert tested.returncode == 0, tested.stderr[-1500:]
