"""The example site end to end: ``manage.py migrate`` from an empty database (twice),
``manage.py pgbg`` commands, the import view and task page, the admin pages and actions
(terminate killing the task's process group, retry, remove; refused without permission),
with a real worker started by ``manage.py pgbg worker``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pgbg_django_fixtures import count as count_tasks
from pgbg_django_fixtures import (  # noqa: F401
    django_db,
    django_template,
    hold_file,
    manage,
    site_worker,
)

import psycopg
import pytest
from conftest import wait_for
from django.contrib.auth.models import Permission, User
from django.test import Client

import pgbg
from pgbg import migrate
from pgbg.contrib.django.models import Task
from studies.models import Study


def test_migrate_from_an_empty_database_and_again(server_url: str) -> None:
    name = f"pgbg_django_empty_{os.getpid()}"
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        first = manage(url, "migrate")
        assert first.returncode == 0, first.stderr
        assert "Applying pgbg.0001_initial... OK" in first.stdout
        assert "Applying studies.0001_initial... OK" in first.stdout
        again = manage(url, "migrate")
        assert again.returncode == 0, again.stderr
        assert "No migrations to apply" in again.stdout
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SELECT version_num FROM pgbg.alembic_version").fetchone()
            tables = {r[0] for r in conn.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables")}
        assert version == (migrate.head_revision(),)
        assert {"pgbg.task", "pgbg.task_log", "public.studies_study",
                "public.django_migrations"} <= tables
        assert "public.alembic_version" not in tables  # pgbg's history is in schema pgbg
        check = manage(url, "makemigrations", "--check", "--dry-run")
        assert check.returncode == 0, check.stdout + check.stderr  # models match migrations
        # pgbg's CLI through manage.py, on Django's database
        listed = manage(url, "pgbg", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        bad = manage(url, "pgbg", "show", "not-a-uuid")
        assert bad.returncode == 1 and bad.stderr.startswith("error: ")
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_sites_own_tests_run_on_djangos_test_database(django_db: str) -> None:
    tested = manage(django_db, "test", "studies", "--noinput", "-v", "2")
    assert tested.returncode == 0, tested.stderr
    assert "Ran 1 test" in tested.stderr and "\nOK\n" in tested.stderr
    assert count_tasks(django_db) == 0  # the test database's, never this one


def admin_client(**perms: bool) -> Client:
    if perms.get("superuser", True):
        user = User.objects.create_superuser("admin", "admin@example.org", "x")
    else:
        user = User.objects.create_user("staff", "staff@example.org", "x", is_staff=True)
        codenames = [name for name, given in perms.items() if given and name != "superuser"]
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="pgbg",
                                                            codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def action(client: Client, name: str, *ids: Any) -> Any:
    return client.post("/admin/pgbg/task/", {"action": name, "_selected_action": list(
        map(str, ids))}, follow=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_site_the_task_page_and_the_admin(django_db: str, site_worker: Any,
                                              hold_file: Path) -> None:
    hold_file.touch()
    site_worker(2, STUDIES_HOLD_FILE=str(hold_file))
    client = admin_client()

    # the view queues two imports in the transaction that creates their studies
    response = client.post("/imports/", {"accession": ["CT-1", "CT-2"], "series": "2"})
    assert response.status_code == 302
    first, second = Study.objects.order_by("id")
    wait_for(lambda: pgbg.get_task(first.task_id).info == "importing CT-1",
             message="the first import to start")
    page = client.get("/tasks/")
    assert [t.id for t in page.context["running"]] == [first.task_id]
    [waiting] = page.context["queued"]
    assert waiting.task_id == str(second.task_id) and "import" in waiting.reason
    assert b"Terminate" in page.content and waiting.reason.encode() in page.content

    # the admin: list, filters, search, change page, queue
    listing = client.get("/admin/pgbg/task/", {"status__exact": "running"})
    assert listing.status_code == 200
    assert [t.id for t in listing.context["cl"].result_list] == [first.task_id]
    found = client.get("/admin/pgbg/task/", {"q": str(second.task_id)})
    assert [t.id for t in found.context["cl"].result_list] == [second.task_id]
    assert client.get("/admin/pgbg/task/", {"q": "not a uuid"}).status_code == 200
    by_type = client.get("/admin/pgbg/task/", {"q": "import", "o": "-5"})
    assert len(by_type.context["cl"].result_list) == 2
    queue = client.get("/admin/pgbg/task/queue/")
    assert str(second.task_id).encode() in queue.content
    assert waiting.reason.encode() in queue.content
    assert client.get("/admin/pgbg/worker/").context["cl"].result_count == 1
    change = client.get(f"/admin/pgbg/task/{first.task_id}/change/")
    assert change.status_code == 200
    for text in (b"importing CT-1", b"study: ", b"studies.tasks:import_study",
                 b'name="_save"'):
        assert (text in change.content) is (text != b'name="_save"'), text  # read-only

    # terminate from the admin: the task's whole process group goes
    pid = pgbg.get_task(first.task_id).pid
    assert pid and group_alive(pid)
    done = action(client, "terminate", first.task_id)
    assert b"1 task(s) terminated or being terminated" in done.content
    row = pgbg.wait_task(first.task_id, 60)
    assert row.status is pgbg.TaskStatus.TERMINATED
    wait_for(lambda: not group_alive(pid), message="the task's process group to be gone")

    # the second import starts once the first is gone; remove a third before it starts
    wait_for(lambda: pgbg.get_task(second.task_id).status is pgbg.TaskStatus.RUNNING,
             message="the second import to start")
    client.post("/imports/", {"accession": ["CT-3"], "series": "1"})
    third = Study.objects.get(accession="CT-3")
    removed = action(client, "remove", third.task_id, second.task_id)
    assert b"1 task(s) removed from the queue" in removed.content
    assert b"already started" in removed.content  # the running one: one line, unchanged
    assert pgbg.get_task(third.task_id).status is pgbg.TaskStatus.CANCELLED

    # retry the terminated import: it runs again, to the end
    hold_file.unlink()
    retried = action(client, "retry", first.task_id)
    assert b"1 task(s) queued again" in retried.content
    assert pgbg.wait_task(first.task_id, 60).status is pgbg.TaskStatus.SUCCEEDED
    assert pgbg.wait_task(second.task_id, 60).status is pgbg.TaskStatus.SUCCEEDED
    assert Study.objects.get(pk=first.pk).imported_series == 2
    output = client.get(f"/admin/pgbg/task/{first.task_id}/change/")
    assert b"imported series 2 of CT-1" in output.content  # captured output


def test_the_openrem_style_view_queues_in_the_same_transaction(django_db: str,
                                                               site_worker: Any) -> None:
    site_worker(1)
    client = admin_client()
    client.post("/imports/", {"accession": ["MG-1"], "series": "1", "style": "openrem"})
    study = Study.objects.get(accession="MG-1")
    row = pgbg.wait_task(study.task_id, 60)
    assert row.status is pgbg.TaskStatus.SUCCEEDED, row.error
    assert row.func == "studies.tasks:import_study_now" and row.num_of_task_type == {"import": 1}
    with pytest.raises(Exception, match="duplicate key"):  # the study exists: rolled back
        client.post("/imports/", {"accession": ["MG-2", "MG-1"], "style": "openrem"})
    assert not Study.objects.filter(accession="MG-2").exists()
    assert len(pgbg.list_tasks()) == 1  # MG-2's import went with its transaction


def test_admin_actions_with_the_change_permission(django_db: str) -> None:
    queued = [pgbg.run_in_background("studies.tasks:import_study_now", "import", n)
              for n in range(3)]
    client = admin_client(superuser=False, view_task=True, change_task=True)
    listing = client.get("/admin/pgbg/task/")
    choices = {name for name, _label in listing.context["action_form"].fields["action"].choices}
    assert {"terminate", "retry", "remove"} <= choices and "delete_selected" not in choices
    action(client, "terminate", queued[0].id)
    action(client, "remove", queued[1].id)
    assert [pgbg.get_task(q).status for q in queued] == [
        pgbg.TaskStatus.CANCELLED, pgbg.TaskStatus.CANCELLED, pgbg.TaskStatus.QUEUED]
    with pytest.raises(TypeError, match="only through pgbg's API"):
        Task.objects.get(pk=queued[2].id).save()  # the ORM cannot write pgbg's rows
    assert client.post(f"/admin/pgbg/task/{queued[2].id}/change/",
                       {"status": "succeeded"}).status_code in (200, 302)
    assert pgbg.get_task(queued[2]).status is pgbg.TaskStatus.QUEUED  # read-only
    page = client.post(f"/tasks/{queued[2].id}/terminate/", follow=True)  # the site's button
    assert b"terminating" in page.content
    assert pgbg.get_task(queued[2]).status is pgbg.TaskStatus.CANCELLED


@pytest.mark.parametrize("perms", [{"superuser": False, "view_task": True},
                                   {"superuser": False}])
def test_admin_actions_need_the_change_permission(django_db: str, perms: dict[str, bool]
                                                  ) -> None:
    queued = pgbg.run_in_background("studies.tasks:import_study_now", "import", 1)
    client = admin_client(**perms)
    listing = client.get("/admin/pgbg/task/")
    if not perms.get("view_task"):
        assert listing.status_code == 403
    else:
        assert listing.status_code == 200
        assert listing.context["action_form"] is None  # no action it may take
        assert b"Terminate selected tasks" not in listing.content
    for name in ("terminate", "remove", "retry"):
        action(client, name, queued.id)
    assert pgbg.get_task(queued).status is pgbg.TaskStatus.QUEUED
    assert client.post(f"/tasks/{queued.id}/terminate/").status_code == 403
    assert client.get(f"/admin/pgbg/task/{queued.id}/change/").status_code in (
        200 if perms.get("view_task") else 403,)
    assert pgbg.get_task(queued).status is pgbg.TaskStatus.QUEUED
