"""The dashboard as a user meets it: a real ``pgbg web`` process, a real worker, a real
PostgreSQL. Authentication, CSRF, filters, a failed task's page, 404s, /metrics, hostile
data, bad parameters."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import WorkerProcess, wait_for
from pgbg_test_web_tasks import HOSTILE
from prometheus_client.parser import text_string_to_metric_families

import pgbg
from web.conftest import PASSWORD, USER, WebServer

FAIL = "pgbg_test_web_tasks:fail"
SUCCEED = "pgbg_test_web_tasks:succeed"


@pytest.fixture(scope="module")
def server(start_server: Any) -> WebServer:
    return start_server()


@pytest.fixture(scope="module")
def client(server: WebServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def done(result: pgbg.Result, timeout: float = 60) -> pgbg.BackgroundTask:
    return pgbg.wait_task(result, timeout=timeout)


def csrf_of(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "the page has no CSRF field"
    return match[1]


# -- authentication -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/tasks", "/queue", "/workers", "/periodic", "/metrics",
                                  f"/tasks/{uuid.uuid4()}"])
def test_every_page_needs_the_password(server: WebServer, path: str) -> None:
    with server.client(auth=False) as anonymous:
        none = anonymous.get(path)
        wrong = anonymous.get(path, auth=(USER, "wrong"))
        wrong_user = anonymous.get(path, auth=("root", PASSWORD))
        garbage = anonymous.get(path, headers={"Authorization": "Basic !!!not-base64"})
    for response in (none, wrong, wrong_user, garbage):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert PASSWORD not in response.text
    with server.client() as right:
        assert right.get(path).status_code in (200, 404)


def test_actions_need_the_password(server: WebServer) -> None:
    with server.client(auth=False) as anonymous:
        response = anonymous.post(f"/tasks/{uuid.uuid4()}/terminate", data={"csrf": "x"})
    assert response.status_code == 401


def test_healthz_is_open_and_says_little(server: WebServer) -> None:
    with server.client(auth=False) as anonymous:
        response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert "postgresql" not in response.text


# -- pages ----------------------------------------------------------------------------------

def test_failed_task_page_shows_its_error(client: httpx.Client,
                                          module_worker: WorkerProcess) -> None:
    result = pgbg.enqueue(FAIL, args=["the disk is full"], task_type="web-fail")
    row = done(result)
    assert row.status == pgbg.TaskStatus.FAILED
    page = client.get(f"/tasks/{result.id}")
    assert page.status_code == 200
    assert "ValueError: the disk is full" in page.text
    assert 'class="status s-failed"' in page.text
    assert "/retry" in page.text  # its Retry button
    assert "/terminate" not in page.text
    overview = client.get("/")
    assert overview.status_code == 200
    assert "the disk is full" in overview.text  # among the recent failures
    assert "<svg" in overview.text


@pytest.mark.parametrize("bad", ["not-a-uuid", "1", "%3Cscript%3E", "' OR 1=1 --"])
def test_bad_task_id_is_404(client: httpx.Client, bad: str) -> None:
    response = client.get(f"/tasks/{bad}")
    assert response.status_code == 404
    assert "Traceback" not in response.text
    assert "<script>" not in response.text


def test_unknown_task_id_is_404(client: httpx.Client) -> None:
    unknown = uuid.uuid4()
    response = client.get(f"/tasks/{unknown}")
    assert response.status_code == 404
    assert f"no task with id {unknown}" in response.text


def test_filters(client: httpx.Client, module_worker: WorkerProcess) -> None:
    kind = f"web-filter-{uuid.uuid4().hex[:6]}"
    ok = pgbg.enqueue(SUCCEED, args=[1], task_type=kind)
    bad = pgbg.enqueue(FAIL, args=["needle in the error"], task_type=kind)
    other = pgbg.enqueue(FAIL, args=["another error"], task_type=kind + "-other")
    for r in (ok, bad, other):
        done(r)
    by_type = client.get("/tasks", params={"type": kind}).text
    assert str(ok.id) in by_type and str(bad.id) in by_type and str(other.id) not in by_type
    failed = client.get("/tasks", params={"type": kind, "status": "failed"}).text
    assert str(bad.id) in failed and str(ok.id) not in failed
    text = client.get("/tasks", params={"q": "NEEDLE in"}).text
    assert str(bad.id) in text and str(other.id) not in text
    window = client.get("/tasks", params={"type": kind, "since": "1h"}).text
    assert str(ok.id) in window


def test_keyset_pages_cover_every_task_once(client: httpx.Client, conn_web: Any) -> None:
    kind = f"web-pages-{uuid.uuid4().hex[:6]}"
    conn_web.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                  finished_at, attempt)
           SELECT gen_random_uuid(), %s, 'm:f', 'succeeded', now() - interval '1 hour',
                  now() - interval '1 hour', now() - (i %% 7) * interval '1 second', 1
             FROM generate_series(1, 23) i""", (kind,))
    seen: list[str] = []
    query: str | None = f"type={kind}&limit=5"
    pages = 0
    while query:
        page = client.get(f"/tasks?{query}")
        assert page.status_code == 200
        seen += re.findall(r'href="/tasks/([0-9a-f-]{36})"', page.text)
        next_link = re.search(r'rel="next" href="/tasks\?([^"]+)"', page.text)
        query = next_link[1].replace("&amp;", "&") if next_link else None
        pages += 1
    assert pages == 5
    assert len(seen) == 23 and len(set(seen)) == 23


@pytest.mark.parametrize("query", ["status=bogus", "limit=abc", "limit=0", "limit=100000",
                                   "since=yesterday", "since=-1h", "after=garbage",
                                   "after=2026-01-01T00:00:00,not-a-uuid",
                                   "after=2026-01-01T00:00:00," + str(uuid.UUID(int=1)),
                                   "type=" + "x" * 300, "q=%00", "limit=1&limit=2",
                                   "since=99999999999999999999d", "since=1e9", "limit=1.5"])
def test_bad_parameters_are_400(client: httpx.Client, query: str) -> None:
    response = client.get(f"/tasks?{query}")
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text


def test_bad_parameter_message_is_escaped(client: httpx.Client) -> None:
    response = client.get("/tasks", params={"status": "<script>x</script>"})
    assert response.status_code == 400
    assert "<script>x" not in response.text
    assert "&lt;script&gt;x" in response.text


def test_pages_answer(client: httpx.Client) -> None:
    for path in ("/", "/tasks", "/queue", "/workers", "/periodic", "/tasks?status=queued"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
    fragment = client.get("/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and 'id="live"' in fragment.text
    assert client.get("/nowhere").status_code == 404
    assert client.post("/queue", data={}).status_code == 405
    assert client.get("/static/htmx.min.js").status_code == 200


# -- hostile data ----------------------------------------------------------------------

def test_hostile_values_are_escaped(client: httpx.Client, module_worker: WorkerProcess) -> None:
    result = pgbg.enqueue("pgbg_test_web_tasks:hostile", args=[HOSTILE, "x" * 100_000],
                          kwargs={HOSTILE: HOSTILE}, task_type=HOSTILE)
    done(result)
    pages = [client.get(f"/tasks/{result.id}").text, client.get("/").text,
             client.get("/tasks").text, client.get("/tasks", params={"type": HOSTILE}).text,
             client.get("/metrics").text]
    for text in pages[:4]:
        text = re.sub(r'value="[^"]*"', "", text)  # a filter's own input keeps it exact
        assert "<script>alert" not in text
        assert "<img src=x" not in text
        assert "\u202e" not in text and "\x1b" not in text
    detail = pages[0]
    assert "&lt;script&gt;alert(" in detail
    assert "more characters)" in detail  # the 100,000-character argument, cut
    assert len(detail) < 400_000
    assert "\\u202e" in detail  # the bidi override, shown
    families = {f.name: f for f in text_string_to_metric_families(pages[4])}
    labels = {s.labels.get("task_type") for s in families["pgbg_tasks_finished_recent"].samples}
    assert HOSTILE in labels  # exactly, escaped and parsed back


# -- actions and CSRF --------------------------------------------------------------------

def test_post_without_or_with_a_wrong_csrf_token_is_403(client: httpx.Client,
                                                        conn_web: Any) -> None:
    result = pgbg.enqueue(SUCCEED, args=[1], task_type="web-csrf", delay=3600)
    path = f"/tasks/{result.id}/remove"
    token = csrf_of(client, f"/tasks/{result.id}")
    assert client.post(path).status_code == 403
    assert client.post(path, data={"csrf": ""}).status_code == 403
    assert client.post(path, data={"csrf": token + "x"}).status_code == 403
    with httpx.Client(base_url=str(client.base_url), auth=(USER, PASSWORD)) as fresh:
        # a token, but another visitor's cookie (or none): refused
        assert fresh.post(path, data={"csrf": token}).status_code == 403
        forged = token.split(".")[0] + "." + "0" * 64
        fresh.cookies.set(f"pgbg_csrf_{client.base_url.port}", forged)
        assert fresh.post(path, data={"csrf": forged}).status_code == 403
    assert pgbg.get_task(result).status == pgbg.TaskStatus.QUEUED
    response = client.post(path, data={"csrf": token})
    assert response.status_code == 303
    assert pgbg.get_task(result).status == pgbg.TaskStatus.CANCELLED
    page = client.get(response.headers["location"])
    assert "removed from the queue" in page.text


def test_action_in_the_wrong_state_is_409(client: httpx.Client) -> None:
    result = pgbg.enqueue(SUCCEED, args=[1], task_type="web-409", delay=3600)
    token = csrf_of(client, f"/tasks/{result.id}")
    response = client.post(f"/tasks/{result.id}/retry", data={"csrf": token})
    assert response.status_code == 409
    assert "only failed, terminated or cancelled tasks can be retried" in response.text
    assert client.post(f"/tasks/{uuid.uuid4()}/remove", data={"csrf": token}).status_code == 404
    assert client.post(f"/tasks/{result.id}/explode", data={"csrf": token}).status_code == 404


def test_bulk_retry_of_the_filter(client: httpx.Client, module_worker: WorkerProcess) -> None:
    kind = f"web-bulk-{uuid.uuid4().hex[:6]}"
    failed = [pgbg.enqueue(FAIL, args=[f"boom {i}"], task_type=kind) for i in range(3)]
    fine = pgbg.enqueue(SUCCEED, args=[1], task_type=kind)
    for r in (*failed, fine):
        done(r)
    confirm = client.get("/tasks/retry", params={"type": kind, "status": "failed"})
    assert confirm.status_code == 200
    assert 'id="retry-count">3<' in confirm.text
    token = re.search(r'name="csrf" value="([^"]+)"', confirm.text)
    assert token
    assert client.post("/tasks/retry", data={"type": kind, "status": "failed"}
                       ).status_code == 403
    response = client.post("/tasks/retry", data={"type": kind, "status": "failed",
                                                  "csrf": token[1]})
    assert response.status_code == 200
    assert "3 tasks queued again" in response.text
    wait_for(lambda: all(pgbg.get_task(r).attempt == 2 and pgbg.get_task(r).complete
                         for r in failed), timeout=60, message="the retried tasks to run")
    assert pgbg.get_task(fine).attempt == 1


# -- /metrics ------------------------------------------------------------------------------

def test_metrics(client: httpx.Client, module_worker: WorkerProcess, tmp_path: Path) -> None:
    kind = f"web-metrics-{uuid.uuid4().hex[:6]}"
    for r in [pgbg.enqueue(SUCCEED, args=[1], task_type=kind) for _ in range(2)] + [
            pgbg.enqueue(FAIL, args=["m"], task_type=kind)]:
        done(r)
    release = tmp_path / "release"
    limits = {kind + "-later": 1}
    running = pgbg.enqueue("pgbg_test_tasks:block_until", args=[str(release)],
                           task_type=kind + "-later", num_of_task_type=limits)
    wait_for(lambda: pgbg.get_task(running).status == pgbg.TaskStatus.RUNNING)
    waiting = pgbg.enqueue("pgbg_test_tasks:block_until", args=[str(release)],
                           task_type=kind + "-later", num_of_task_type=limits)
    wait_for(lambda: "pgbg_worker_slots" in client.get("/metrics").text
             and module_worker.pid, message="the worker to register")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in ("pgbg_up", "pgbg_tasks", "pgbg_queue_depth", "pgbg_queue_oldest_waiting_seconds",
                 "pgbg_tasks_finished_recent", "pgbg_tasks_claimed_recent",
                 "pgbg_task_wait_seconds", "pgbg_task_run_seconds", "pgbg_workers",
                 "pgbg_worker_slots", "pgbg_worker_busy_slots",
                 "pgbg_worker_heartbeat_age_seconds", "pgbg_metrics_window_seconds"):
        assert name in families, name
    assert families["pgbg_task_wait_seconds"].type == "histogram"

    def value(family: str, sample: str | None = None, **labels: str) -> float:
        for s in families[family].samples:
            if (sample is None or s.name == sample) and all(
                    s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no sample {family} {labels}")

    assert value("pgbg_up") == 1
    assert value("pgbg_tasks_finished_recent", status="succeeded", task_type=kind) == 2
    assert value("pgbg_tasks_finished_recent", status="failed", task_type=kind) == 1
    assert value("pgbg_tasks_claimed_recent", task_type=kind) == 3
    assert value("pgbg_task_run_seconds", "pgbg_task_run_seconds_count", task_type=kind) == 3
    assert value("pgbg_task_run_seconds", "pgbg_task_run_seconds_bucket", task_type=kind,
                 le="+Inf") == 3
    assert value("pgbg_tasks", status="queued", task_type=kind + "-later") == 1
    assert value("pgbg_queue_depth", task_type=kind + "-later") == 1
    assert value("pgbg_queue_oldest_waiting_seconds", task_type=kind + "-later") >= 0
    assert value("pgbg_worker_slots", pid=str(module_worker.pid)) == 3
    assert value("pgbg_workers", state="live") >= 1
    assert value("pgbg_tasks", status="running", task_type=kind + "-later") == 1
    assert value("pgbg_worker_busy_slots", pid=str(module_worker.pid)) >= 1
    pgbg.remove_task_from_queue(waiting)
    release.touch()
    done(running)


def test_rows_python_cannot_read_fail_alone(client: httpx.Client, conn_web: Any) -> None:
    kind = f"web-odd-{uuid.uuid4().hex[:6]}"
    row = conn_web.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                  finished_at, result, error)
           VALUES (gen_random_uuid(), %s, 'm:f', 'failed', '-infinity', 'infinity',
                   '20000-01-01', jsonb_build_object('big', repeat('r', 3000000)),
                   repeat('e', 2000000)) RETURNING id""", (kind,)).fetchone()
    assert row
    listing = client.get("/tasks", params={"type": kind})
    assert listing.status_code == 200 and str(row[0]) in listing.text
    page = client.get(f"/tasks/{row[0]}")
    assert page.status_code == 200
    assert "cannot read" in page.text
    assert "more characters)" in page.text and len(page.text) < 200_000
    assert client.get("/").status_code == 200
    conn_web.execute("DELETE FROM pgbg.task WHERE id = %s", (row[0],))


def test_a_body_too_large_is_refused(client: httpx.Client) -> None:
    response = client.post(f"/tasks/{uuid.uuid4()}/remove", content=b"csrf=" + b"x" * (2 << 20),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413


def test_events_tell_pages_the_queue_changed(server: WebServer) -> None:
    with server.client() as client:
        if not pgbg.db.listen_enabled():
            assert client.get("/events").status_code == 404  # poll-only: pages poll
            return
        with client.stream("GET", "/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == "retry: 5000"
            pgbg.enqueue(SUCCEED, args=[1], task_type="web-events", delay=3600)
            assert "data: changed" in (line for line in lines)
        assert 'data-events="/events"' in client.get("/").text
