"""The django.tasks backend without a worker: transactions, options, validation, results."""

from __future__ import annotations

import uuid
from datetime import timedelta

from pgbg_django_fixtures import count, django_db, django_template  # noqa: F401

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.test import override_settings
from django.utils import timezone
from pgbg_django_testapp import tasks
from psycopg.conninfo import conninfo_to_dict

import pgbg
from pgbg.contrib.django import InvalidTaskArguments, PgbgBackend
from pgbg.contrib.django.backend import exception_class_path
from pgbg.exceptions import EnqueueFailed

BACKEND = "pgbg.contrib.django.PgbgBackend"


class Rollback(Exception):
    pass


def test_a_task_queued_in_atomic_commits_and_rolls_back_with_it(django_db: str) -> None:
    with pytest.raises(Rollback), transaction.atomic():
        dropped = tasks.add.enqueue(1, 2)
        assert count(django_db) == 0  # not visible to anyone else before the commit
        raise Rollback
    assert count(django_db) == 0
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(dropped.id)

    with transaction.atomic():
        kept = tasks.add.enqueue(3, 4)
        with pytest.raises(Rollback), transaction.atomic():  # a savepoint
            tasks.add.enqueue(5, 6)
            raise Rollback
        assert count(django_db) == 0
        inside = tasks.add.get_result(kept.id)  # read in the same transaction
        assert (inside.args, inside.status) == ([3, 4], TaskResultStatus.READY)
        assert [q.task_id for q in pgbg.get_queued_tasks()] == [kept.id]
    assert count(django_db) == 1
    assert tasks.add.get_result(kept.id).args == [3, 4]

    outside = tasks.add.enqueue(7, 8)  # autocommit: at once
    assert count(django_db, "SELECT count(*) FROM pgbg.task WHERE id = %s", outside.id) == 1


def test_pgbgs_own_api_fails_in_a_savepoint_of_djangos_transaction(django_db: str) -> None:
    """The use_connection path (pgbg's own API inside atomic()): a refused enqueue is
    pgbg's clear error, and the caller's transaction goes on, keeping what it did."""
    import psycopg

    from studies.models import Study

    with psycopg.connect(django_db, autocommit=True) as other:  # refuses args [2]
        other.execute("ALTER TABLE pgbg.task ADD CONSTRAINT no_two "
                      "CHECK (args <> '[2]'::jsonb)")
    with transaction.atomic():
        Study.objects.create(accession="S-1", series=1)
        pgbg.run_in_background("studies.tasks:import_study_now", "import", 1)
        with pytest.raises(EnqueueFailed, match="no_two"):
            pgbg.run_in_background("studies.tasks:import_study_now", "import", 2)
        Study.objects.create(accession="S-2", series=1)  # the transaction still works
    assert Study.objects.count() == 2 and count(django_db) == 1


def test_pgbgs_own_api_joins_djangos_transaction(django_db: str) -> None:
    """OpenREM-style code, unchanged: run_in_background_with_limits inside atomic()."""
    with pytest.raises(Rollback), transaction.atomic():
        pgbg.run_in_background_with_limits("studies.tasks:import_study_now", "import", 0,
                                           {"import": 1}, 1)
        raise Rollback
    assert count(django_db) == 0
    with transaction.atomic():
        queued = pgbg.run_in_background("studies.tasks:import_study_now", "import", 2)
        assert count(django_db) == 0
    assert pgbg.get_task(queued).status is pgbg.TaskStatus.QUEUED


def test_options_reach_pgbgs_row(django_db: str) -> None:
    first = tasks.fails.enqueue("x")  # @task(priority=10, task_type="test.fails")
    later = timezone.now() + timedelta(hours=1)
    second = tasks.add.using(priority=-100, run_after=later).enqueue(1, 1)
    third = tasks.add.using(num_of_task_type={"adds": 2}, num_proc=3, max_attempts=2,
                            timeout=30, unique_key="one").enqueue(2, 2)
    same = tasks.add.using(unique_key="one").enqueue(9, 9)
    row1, row2, row3 = (pgbg.get_task(r.id) for r in (first, second, third))
    assert (row1.priority, row1.task_type) == (10, "test.fails")
    assert row1.func == "pgbg_django_testapp.tasks:fails"
    assert (row2.priority, row2.run_at, row2.task_type) == (
        -100, later, "pgbg_django_testapp.tasks.add")
    assert (row3.num_of_task_type, row3.num_proc, row3.max_attempts, row3.timeout,
            row3.unique_key) == ({"adds": 2}, 3, 2, 30.0, "one")
    assert same.id == third.id  # the live task holding the key
    # the priority order is pgbg's: higher first
    queue = [q.task_id for q in pgbg.get_queued_tasks()]
    assert queue.index(first.id) < queue.index(third.id)


def test_backend_options_are_defaults(django_db: str) -> None:
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": {
            "max_attempts": 3, "timeout": 60, "task_type": "site"}}}):
        result = tasks.add.enqueue(1, 2)
        row = pgbg.get_task(result.id)
        assert (row.max_attempts, row.timeout, row.task_type) == (3, 60.0, "site")
        row = pgbg.get_task(tasks.fails.enqueue("x").id)  # its own task_type wins
        assert (row.max_attempts, row.task_type) == (3, "test.fails")


def test_bad_settings_and_inputs_raise_djangos_errors_and_write_nothing(django_db: str) -> None:
    with override_settings(TASKS={"default": {"BACKEND": BACKEND,
                                              "OPTIONS": {"concurrency": 4}}}):
        with pytest.raises(InvalidTaskBackend, match="unknown OPTIONS key 'concurrency'"):
            task_backends["default"]
    with override_settings(TASKS={"default": {"BACKEND": BACKEND,
                                              "OPTIONS": {"max_attempts": 0}}}):
        with pytest.raises(InvalidTaskBackend, match="max_attempts must be >= 1"):
            task_backends["default"]
    with override_settings(TASKS={"default": {"BACKEND": BACKEND,
                                              "OPTIONS": {"database": "nope"}}}):
        with pytest.raises(ImproperlyConfigured, match="'nope' is not an alias in DATABASES"):
            task_backends["default"]
    with pytest.raises(InvalidTask, match="priority must be a whole number between -100 and 100"):
        tasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match=r"num_of_task_type\['x'\] must be >= 1"):
        tasks.add.using(num_of_task_type={"x": 0})
    with pytest.raises(InvalidTask, match="timeout must be a positive"):
        tasks.add.using(timeout=-1)
    with pytest.raises(InvalidTask, match="unknown pgbg task option 'concurrency'"):
        tasks.add.using(concurrency=2)
    with pytest.raises(InvalidTask, match="Queue 'fast' is not valid"):
        tasks.add.using(queue_name="fast")
    with pytest.raises(InvalidTaskArguments, match=r"args\[1\] is not JSON \(set") as caught:
        tasks.add.enqueue(1, {2})
    assert isinstance(caught.value, TypeError)
    with pytest.raises(InvalidTaskArguments, match=r"kwargs\['b'\]: nan is not a JSON number"):
        tasks.add.enqueue(1, b=float("nan"))
    with pytest.raises(InvalidTaskArguments, match="NUL"):
        tasks.add.enqueue("a\x00b", 1)
    with pytest.raises(InvalidTask, match="Task function must be defined at a module level"):
        PgbgBackend("x", {}).task_class(func=lambda: None, backend="default")
    assert count(django_db) == 0


def test_results_of_queued_and_cancelled_tasks(django_db: str) -> None:
    result = tasks.add.enqueue(2, 3)
    assert (result.status, result.backend, result.args) == (TaskResultStatus.READY, "default",
                                                            [2, 3])
    uuid.UUID(result.id)
    read = tasks.add.get_result(result.id)
    assert read.task.func is tasks.add.func and read.status is TaskResultStatus.READY
    assert read.enqueued_at is not None and read.attempts == 0
    with pytest.raises(ValueError, match="not finished"):
        _ = read.return_value
    pgbg.terminate_background(result.id)  # queued: cancelled at once
    result.refresh()
    assert result.status is TaskResultStatus.FAILED and result.is_finished
    assert result.errors[0].exception_class_path == "pgbg.exceptions.TaskFailed"
    assert result.errors[0].exception_class is pgbg.TaskFailed
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(str(uuid.uuid4()))
    with pytest.raises(TaskResultDoesNotExist, match="not a pgbg task id"):
        task_backends["default"].get_result("nope")
    plain = pgbg.run_in_background("studies.tasks:import_study_now", "import", 1)
    with pytest.raises(TaskResultDoesNotExist, match=r"not queued through django\.tasks"):
        task_backends["default"].get_result(plain.id)


def test_exception_class_path_is_read_from_the_traceback() -> None:
    def row(error: str, status: str = "failed") -> pgbg.BackgroundTask:
        return pgbg.BackgroundTask(id=uuid.uuid4(), task_type="t", func="m:f", args=[],
                                   kwargs={}, priority=0, status=pgbg.TaskStatus(status),
                                   num_proc=0, num_of_task_type={},
                                   queued_at=timezone.now(), error=error)

    chained = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
               "    g()\nKeyError: 'k'\n\nDuring handling of the above exception, another "
               "exception occurred:\n\nTraceback (most recent call last):\n"
               "  File \"x.py\", line 3, in f\n    raise Boom('a: b')\n"
               "myapp.errors.Boom: a: b\nsecond line of the message\n")
    assert exception_class_path(row(chained)) == "myapp.errors.Boom"
    assert exception_class_path(row("Traceback (most recent call last):\n  File \"x\", "
                                    "line 1\nValueError\n")) == "builtins.ValueError"
    assert exception_class_path(row("exited with code 3")) == "pgbg.exceptions.TaskFailed"
    assert exception_class_path(row(chained, "terminated")) == "pgbg.exceptions.TaskFailed"


def test_the_database_url_holds_the_password_and_pgbg_masks_it() -> None:
    from pgbg import db
    from pgbg.contrib.django import conf

    url = conf.conninfo({"ENGINE": "django.db.backends.postgresql", "NAME": "site",
                         "USER": "app", "PASSWORD": "s3cr3t pw'x", "HOST": "db.internal",
                         "PORT": 5433, "OPTIONS": {"sslmode": "require", "pool": True,
                                                   "server_side_binding": False}})
    params = conninfo_to_dict(url)
    assert params == {"dbname": "site", "user": "app", "password": "s3cr3t pw'x",
                      "host": "db.internal", "port": "5433", "sslmode": "require"}
    for shown in (db.mask_url(url), db.without_password(url)):
        assert "s3cr3t" not in shown and "db.internal" in shown
    with pytest.raises(ImproperlyConfigured, match="names no database"):
        conf.conninfo({"ENGINE": "django.db.backends.postgresql", "NAME": ""})
