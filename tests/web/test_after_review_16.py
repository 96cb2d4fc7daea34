"""What the fixes of review 16 rest on, beyond the reviewer's own tests: the library's
retry rule (``pgbg.retry_task``, which the dashboard, the CLI and the Django admin share),
the Host check, the fragment of a task that is gone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import pgbg

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def failed_row(conn: psycopg.Connection[Any], *, finished: bool,
               key: str | None = None) -> uuid.UUID:
    tid = uuid.uuid4()
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                           finished_at, attempt, error, unique_key)
                    VALUES (%s, 'after16', 'm:f', 'failed', now(), now(),
                            CASE WHEN %s THEN now() END, 1, 'boom', %s)""",
                 (tid, finished, key))
    return tid


def test_retry_task_refuses_a_task_whose_process_has_not_exited(conn_web: Any) -> None:
    tid = failed_row(conn_web, finished=False)
    with pytest.raises(pgbg.InvalidTaskState, match="not exited"):
        pgbg.retry_task(tid)
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.FAILED
    conn_web.execute("UPDATE pgbg.task SET finished_at = now() WHERE id = %s", (tid,))
    pgbg.retry_task(tid)  # once it has: queued again
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.QUEUED


def test_retry_task_refuses_a_task_whose_unique_key_is_held(conn_web: Any) -> None:
    key = f"after16-{uuid.uuid4().hex}"
    tid = failed_row(conn_web, finished=True, key=key)
    holder = pgbg.enqueue("m:f", task_type="after16", unique_key=key, delay=3600)
    with pytest.raises(pgbg.InvalidTaskState, match="unique_key"):
        pgbg.retry_task(tid)
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.FAILED
    pgbg.remove_task_from_queue(holder)
    pgbg.retry_task(tid)  # the key is free again
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.QUEUED


@pytest.fixture
def guarded(web_db: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from pgbg.web import create_app

    app = create_app(database_url=web_db, password=None, allowed_hosts=["localhost"])
    with TestClient(app, base_url="http://localhost:8477",
                    raise_server_exceptions=False) as client:
        yield client


def test_allowed_hosts_refuses_another_name_and_changes_nothing(guarded: Any,
                                                                conn_web: Any) -> None:
    tid = pgbg.enqueue("m:f", task_type="after16", delay=3600).id
    assert guarded.get(f"/tasks/{tid}").status_code == 200
    token = guarded.cookies.get("pgbg_csrf_8477")
    assert token
    refused = guarded.post(f"/tasks/{tid}/remove", data={"csrf": token},
                           headers={"host": "evil.example:8477"}, follow_redirects=False)
    assert refused.status_code == 400 and "Host" in refused.text
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.QUEUED


def test_the_poll_of_a_task_that_is_gone_gets_a_fragment_that_polls_no_more(
        guarded: Any) -> None:
    tid = uuid.uuid4()
    page = guarded.get(f"/tasks/{tid}")
    assert page.status_code == 404  # the page itself: not found
    poll = guarded.get(f"/tasks/{tid}", headers={"HX-Request": "true"})
    assert poll.status_code == 200
    assert f"no task with id {tid}" in poll.text
    assert poll.text.startswith('<div id="live">') and "hx-get" not in poll.text


def test_bulk_retry_takes_the_ids_of_a_full_confirmation_and_refuses_bad_ones(
        guarded: Any, conn_web: Any) -> None:
    tid = failed_row(conn_web, finished=True)
    assert guarded.get("/tasks").status_code == 200
    token = [guarded.cookies.get("pgbg_csrf_8477")]
    assert token[0]
    ids = [str(uuid.uuid4()) for _ in range(999)] + [str(tid)]  # as many as a form carries
    done = guarded.post("/tasks/retry", data={"csrf": token[0], "type": "after16",
                                              "ids": ",".join(ids)})
    assert done.status_code == 200, done.text[-300:]
    assert "1 task queued again" in done.text and "999 skipped" in done.text
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.QUEUED
    again = failed_row(conn_web, finished=True)
    for bad in (",".join([*ids, str(again)]), f"{again},nope"):
        refused = guarded.post("/tasks/retry", data={"csrf": token[0], "type": "after16",
                                                     "ids": bad})
        assert refused.status_code == 400, refused.text[-300:]
    assert pgbg.get_task(again).status == pgbg.TaskStatus.FAILED


def test_create_app_refuses_an_unreadable_database_url_at_once_masked() -> None:
    from pgbg.web import create_app

    with pytest.raises(pgbg.ConfigurationError) as caught:
        create_app(database_url="postgresql://u:s3cret@h/db?sslmode=nope&x", password=None)
    assert "s3cret" not in str(caught.value)
