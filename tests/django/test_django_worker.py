"""django.tasks tasks run by a real ``manage.py pgbg worker``: results, errors, context,
async tasks, the ORM in the child, limits, and a SIGTERM that drains."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path
from typing import Any

from pgbg_django_fixtures import (  # noqa: F401
    count,
    django_db,
    django_template,
    hold_file,
    manage,
    site_worker,
)

import psycopg
from conftest import wait_for
from django.tasks import TaskResult, TaskResultStatus
from pgbg_django_testapp import tasks

import pgbg
from studies.models import Study
from studies.tasks import import_study


def finished(result: TaskResult, timeout: float = 60) -> TaskResult:
    pgbg.wait_task(result.id, timeout)
    result.refresh()
    return result


def test_results_errors_context_async_and_the_orm(django_db: str, site_worker: Any) -> None:
    site_worker(2)
    add = tasks.add.enqueue(2, 3)
    fails = tasks.fails.enqueue("no such study")
    context = tasks.with_context.enqueue("tag")
    doubled = tasks.async_double.enqueue(21)
    orm = tasks.orm_work.enqueue("A-1")
    bad = tasks.not_json.enqueue()

    assert finished(add).status is TaskResultStatus.SUCCESSFUL
    assert add.return_value == 5 and add.attempts == 1 and add.worker_ids
    assert add.started_at is not None and add.finished_at >= add.started_at

    assert finished(fails).status is TaskResultStatus.FAILED
    error = fails.errors[0]
    assert error.exception_class_path == "pgbg_django_testapp.tasks.ImportFailed"
    assert error.exception_class is tasks.ImportFailed
    assert "no such study" in error.traceback and "Traceback" in error.traceback

    assert finished(context).return_value == {"attempt": 1, "id": context.id, "tag": "tag",
                                              "status": "RUNNING"}
    assert finished(doubled).return_value == 42
    assert finished(orm).status is TaskResultStatus.SUCCESSFUL
    assert Study.objects.get(accession="A-1").pk == orm.return_value["study"]
    assert finished(bad).status is TaskResultStatus.FAILED
    assert "Unsupported type" in bad.errors[0].traceback

    # from another process: get_result by id, through the same backend
    script = ("import json, sys; from django.tasks import default_task_backend as b; "
              "r = b.get_result(sys.argv[1]); "
              "print(json.dumps([r.status, r.return_value, r.task.module_path]))")
    shell = manage(django_db, "shell", "-v", "0", "-c",
                   f"import sys; sys.argv = ['x', {add.id!r}]; {script}")
    assert shell.returncode == 0, shell.stderr
    assert json.loads(shell.stdout) == ["SUCCESSFUL", 5, "pgbg_django_testapp.tasks.add"]


def test_each_child_opens_its_own_django_connections(django_db: str, site_worker: Any) -> None:
    """The task module queries at import, so the fork server that preloads it holds a
    Django connection; the children forked after that must not use it."""
    from pgbg_django_testapp import eager

    site_worker(1)
    seen = []
    for _ in range(4):  # one at a time: the fork server preloads the module after the first
        result = finished(eager.backend_pid.enqueue())
        assert result.status is TaskResultStatus.SUCCESSFUL, result.errors
        seen.append(result.return_value)
    assert len({value["pid"] for value in seen}) == 4
    assert len({value["backend_pid"] for value in seen}) == 4  # never a shared session
    with psycopg.connect(django_db, autocommit=True) as conn:
        preloaded = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pgbg%%'").fetchone()
    assert preloaded is not None and preloaded[0] >= 1  # the fork server's own, still open


def test_limits_hold_for_a_task_declared_with_num_of_task_type(
        django_db: str, site_worker: Any, hold_file: Path) -> None:
    hold_file.touch()
    site_worker(3, "--import", "studies.tasks", STUDIES_HOLD_FILE=str(hold_file))
    studies = [Study.objects.create(accession=f"S-{n}", series=1) for n in range(3)]
    results = [import_study.enqueue(study.pk) for study in studies]
    running = wait_for(lambda: pgbg.list_tasks(status=["running"]), message="one import running")
    queued = pgbg.get_queued_tasks()
    assert len(running) == 1 and len(queued) == 2
    assert all("import" in q.reason for q in queued), [q.reason for q in queued]
    hold_file.unlink()
    for result in results:
        assert finished(result).status is TaskResultStatus.SUCCESSFUL
    rows = sorted((pgbg.get_task(r.id) for r in results), key=lambda row: row.started_at)
    for before, after in itertools.pairwise(rows):
        assert before.finished_at <= after.started_at  # never two at once
    assert [r.return_value for r in results] == [{"study": s.pk, "series": 1} for s in studies]
    assert all(s.imported_at for s in Study.objects.all())


def test_sigterm_drains_the_running_task(django_db: str, site_worker: Any,
                                         hold_file: Path) -> None:
    hold_file.touch()
    worker = site_worker(1, STUDIES_HOLD_FILE=str(hold_file))
    study = Study.objects.create(accession="D-1", series=2)
    result = import_study.enqueue(study.pk)
    wait_for(lambda: pgbg.get_task(result.id).info == "importing D-1",
             message="the import to start")
    later = import_study.enqueue(Study.objects.create(accession="D-2", series=1).pk)
    worker.proc.send_signal(signal.SIGTERM)  # soft: the running import finishes
    wait_for(lambda: any("stop" in line.lower() for line in worker.log),
             message="the worker to say it stops")
    hold_file.unlink()
    assert worker.proc.wait(timeout=60) == 0
    assert finished(result).status is TaskResultStatus.SUCCESSFUL
    assert pgbg.get_task(later.id).status is pgbg.TaskStatus.QUEUED  # left for the next worker
    assert Study.objects.get(pk=study.pk).imported_series == 2


def test_a_forked_child_starts_without_the_fork_servers_connection_pools() -> None:
    """Deterministic half of the review's pool test (which reaches an inherited pool only
    when a spare child was forked after the fork server opened one): what the child runs
    after fork leaves Django's pools (a class attribute, not ``connections``) behind,
    referenced and untouched, so its first query opens a pool of its own."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    from pgbg.contrib.django import forking

    pools = DatabaseWrapper._connection_pools
    saved = dict(pools)
    inherited = object()  # stands for the fork server's ConnectionPool: never touched
    pools["default"] = inherited
    try:
        forking._forget_pools()
        assert "default" not in DatabaseWrapper._connection_pools
        assert any(kept.get("default") is inherited for kept in forking._inherited
                   if isinstance(kept, dict))
    finally:
        pools.clear()
        pools.update(saved)
