"""A hostile review of the dashboard (issue 16): each test here failed on the code it was
written against. Real PostgreSQL (the module's database), the app in-process through
Starlette's TestClient where a server process adds nothing, a real ``pgbg web`` or
uvicorn process where it does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import wait_for

import pgbg
from web.conftest import PASSWORD, USER, WebServer, free_port

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

PREFIX = "/admin/tasks"


def mounted(web_db: str, **options: Any) -> Any:
    """The dashboard embedded as the issue says: ``create_app`` under a ``Mount``."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from pgbg.web import create_app

    return Starlette(routes=[Mount(PREFIX, app=create_app(database_url=web_db, **options))])


@pytest.fixture
def embedded(web_db: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(mounted(web_db, password=None), raise_server_exceptions=False) as client:
        yield client


def queued_later(conn: psycopg.Connection[Any], task_type: str = "review16") -> uuid.UUID:
    """A task that stays queued (no worker runs in this module, and it is not due)."""
    tid = uuid.uuid4()
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, run_at)
                    VALUES (%s, %s, 'm:f', 'queued', now() + interval '1 day')""",
                 (tid, task_type))
    return tid


def csrf_of(text: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', text)
    assert match, "the page has no CSRF field"
    return match[1]


# -- embedding under a path prefix -------------------------------------------------------

def test_embedded_under_a_prefix_links_forms_and_static_stay_under_it(
        embedded: Any, conn_web: Any) -> None:
    tid = queued_later(conn_web)
    for path in ("/", "/tasks", f"/tasks/{tid}", "/queue"):
        page = embedded.get(PREFIX + path)
        assert page.status_code == 200, (path, page.text[:300])
        urls = re.findall(r'(?:href|src|action|hx-get)="(/[^"]*)"', page.text)
        outside = sorted({u for u in urls if not u.startswith(PREFIX + "/")})
        # observed: href="/static/pgbg.css", src="/static/htmx.min.js", href="/tasks",
        # action="/tasks/<id>/terminate": the host app's own pages (or 404s), not pgbg's
        assert outside == [], f"{path}: links leave the mount: {outside[:8]}"


def test_embedded_under_a_prefix_an_action_redirects_under_it(embedded: Any,
                                                              conn_web: Any) -> None:
    tid = queued_later(conn_web)
    page = embedded.get(f"{PREFIX}/tasks/{tid}")
    assert page.status_code == 200
    done = embedded.post(f"{PREFIX}/tasks/{tid}/remove", data={"csrf": csrf_of(page.text)},
                         follow_redirects=False)
    assert done.status_code == 303, done.text[:300]
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.CANCELLED
    # observed: Location: /tasks/<id>?done=remove (outside the mount)
    assert done.headers["location"].startswith(f"{PREFIX}/tasks/{tid}")


def test_embedded_under_a_prefix_healthz_stays_open(web_db: str) -> None:
    from starlette.testclient import TestClient

    app = mounted(web_db, user=USER, password=PASSWORD)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get(f"{PREFIX}/tasks", auth=(USER, PASSWORD)).status_code == 200
        health = client.get(f"{PREFIX}/healthz")
    # observed: 401 (the guard compares the full path, /admin/tasks/healthz, with /healthz)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"


def test_embedded_under_a_prefix_static_files_may_be_cached(embedded: Any) -> None:
    static = embedded.get(f"{PREFIX}/static/htmx.min.js")
    assert static.status_code == 200
    # observed: cache-control: no-store (the guard looks for "/static/" at the path's start)
    assert static.headers["cache-control"] == "private, max-age=3600"


APP_MODULE = '''
import os
from starlette.applications import Starlette
from starlette.routing import Mount
from pgbg.web import create_app

app = Starlette(routes=[Mount("{prefix}", app=create_app(
    database_url=os.environ["PGBG_DATABASE_URL"], password=None))])
'''


def test_embedded_under_a_mount_events_still_announce_changes(web_db: str,
                                                              tmp_path: Path) -> None:
    """A mounted app's lifespan is not run by Starlette (nor FastAPI): the LISTEN thread
    that feeds /events is started only there, so embedded, /events never says anything."""
    (tmp_path / "host_app.py").write_text(APP_MODULE.format(prefix=PREFIX))
    port = free_port()
    env = {**os.environ, "PGBG_DATABASE_URL": web_db}
    env.pop("PGBG_NO_LISTEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "--port", str(port),
         "host_app:app"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, "uvicorn exited"
        try:
            return httpx.get(base + PREFIX + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(answers, timeout=60, message="the host app to answer")
        seen: list[str] = []
        with httpx.stream("GET", base + PREFIX + "/events", timeout=30) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("retry:")
            pgbg.enqueue("pgbg_test_web_tasks:succeed", args=[1], task_type="review16-ev",
                         run_at=None, delay=3600)
            deadline = time.monotonic() + 20  # a bound on the wait, not a synchronisation
            for line in lines:
                seen.append(line)
                if line == "data: changed" or time.monotonic() > deadline:
                    break
        # observed: only ": keep-alive" comments, never "data: changed"
        assert "data: changed" in seen, seen
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- faults --------------------------------------------------------------------------------

END_DASHBOARD_CONNECTIONS = """
    SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND application_name LIKE 'pgbg%%' AND backend_type = 'client backend'"""


@pytest.fixture(scope="module")
def restart_server(start_server: Any) -> WebServer:
    """A ``pgbg web`` of its own for the tests that end its connections."""
    return start_server()


@pytest.mark.parametrize("path", ["/tasks", "/", "/metrics"])
def test_a_page_after_its_connections_were_ended_is_not_a_503(
        restart_server: WebServer, conn_web: Any, path: str) -> None:
    """What a database restart (or a failover, or pg_terminate_backend) does to the pool:
    the database answers again at once, so the dashboard must too."""
    with restart_server.client() as client:
        assert client.get(path).status_code == 200
        assert conn_web.execute(END_DASHBOARD_CONNECTIONS).fetchone()[0] >= 1
        after = client.get(path)
    # observed: 503 "lost the connection to ...: terminating connection due to
    # administrator command" for each pooled connection idle less than 5 s
    assert after.status_code == 200, after.text[:400]


def test_an_action_after_its_connections_were_ended_is_not_a_503(
        restart_server: WebServer, conn_web: Any) -> None:
    first, second = queued_later(conn_web), queued_later(conn_web)
    with restart_server.client() as client:
        page = client.get(f"/tasks/{first}")
        token = csrf_of(page.text)
        assert client.post(f"/tasks/{first}/remove", data={"csrf": token},
                           follow_redirects=False).status_code == 303
        assert conn_web.execute(END_DASHBOARD_CONNECTIONS).fetchone()[0] >= 1
        removed = client.post(f"/tasks/{second}/remove", data={"csrf": token},
                              follow_redirects=False)
    # observed: 503 (the process's shared connection died; nothing retries on a new one)
    assert removed.status_code == 303, removed.text[:400]
    assert pgbg.get_task(second).status == pgbg.TaskStatus.CANCELLED


# -- access --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_server(start_server: Any) -> WebServer:
    """``pgbg web`` on loopback without a password, as the README's first example runs it."""
    return start_server(password=None)


def test_without_a_password_a_foreign_host_name_is_refused(open_server: WebServer,
                                                           conn_web: Any) -> None:
    """DNS rebinding: a page from http://rebind.attacker.example:PORT whose name then
    resolves to 127.0.0.1 is same-origin with the loopback dashboard in the victim's
    browser. It can read a task page (and its CSRF token, and the cookie is its own) and
    post Terminate/Retry/Remove. With no password, the Host header is the only thing the
    dashboard can check: it must name this machine (localhost, 127.0.0.1, [::1])."""
    tid = queued_later(conn_web)
    host = {"Host": f"rebind.attacker.example:{open_server.port}"}
    with open_server.client(auth=False) as browser:
        assert browser.get(f"/tasks/{tid}").status_code == 200  # the real origin works
        page = browser.get(f"/tasks/{tid}", headers=host)
        acted = None
        if page.status_code == 200:
            acted = browser.post(f"/tasks/{tid}/remove", data={"csrf": csrf_of(page.text)},
                                 headers=host, follow_redirects=False)
    # observed: 200 with the page (and its token), then 303: the task was removed
    assert page.status_code in (400, 403, 421), (page.status_code, acted)
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.QUEUED


# -- actions -------------------------------------------------------------------------------

@pytest.fixture
def app_client(web_db: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from pgbg.web import create_app

    with TestClient(create_app(database_url=web_db, password=None),
                    raise_server_exceptions=False) as client:
        yield client


def failed_with_a_taken_key(conn: psycopg.Connection[Any]) -> tuple[uuid.UUID, uuid.UUID]:
    """A failed task whose unique_key a queued task holds now (queued again by the app)."""
    key = f"review16-{uuid.uuid4().hex}"
    failed, queued = uuid.uuid4(), uuid.uuid4()
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                           finished_at, attempt, error, unique_key)
                    VALUES (%s, 'review16-key', 'm:f', 'failed', now(), now(), now(), 1,
                            'boom', %s)""", (failed, key))
    conn.execute("""INSERT INTO pgbg.task (id, task_type, func, status, run_at, unique_key)
                    VALUES (%s, 'review16-key', 'm:f', 'queued', now() + interval '1 day',
                            %s)""", (queued, key))
    return failed, queued


def test_retry_of_a_task_whose_unique_key_is_taken_is_a_409(app_client: Any,
                                                            conn_web: Any) -> None:
    failed, _queued = failed_with_a_taken_key(conn_web)
    page = app_client.get(f"/tasks/{failed}")
    assert page.status_code == 200 and f"/tasks/{failed}/retry" in page.text  # a Retry button
    retried = app_client.post(f"/tasks/{failed}/retry", data={"csrf": csrf_of(page.text)},
                              follow_redirects=False)
    # observed: 500 "an unexpected error" (psycopg UniqueViolation on task_unique_key_idx)
    assert retried.status_code == 409, retried.text[-600:]
    assert "unique" in retried.text.lower()
    assert pgbg.get_task(failed).status == pgbg.TaskStatus.FAILED


def test_bulk_retry_skips_a_task_whose_unique_key_is_taken(app_client: Any,
                                                           conn_web: Any) -> None:
    failed, _queued = failed_with_a_taken_key(conn_web)
    confirm = app_client.get("/tasks/retry", params={"type": "review16-key",
                                                     "status": "failed"})
    assert confirm.status_code == 200
    done = app_client.post("/tasks/retry", data={"csrf": csrf_of(confirm.text),
                                                 "type": "review16-key", "status": "failed"})
    # observed: 500; the tasks after it in the batch are never retried
    assert done.status_code == 200, done.text[-600:]
    assert "skipped" in done.text
    assert pgbg.get_task(failed).status == pgbg.TaskStatus.FAILED


def test_retry_of_a_failed_task_whose_process_still_exits_is_refused(app_client: Any,
                                                                    conn_web: Any) -> None:
    """``record_task_error_exit``: failed, its process still running (finished_at NULL).
    The page offers no Retry; a POST that asks anyway must change nothing, or a second
    child of the same task can start while the first still runs (invariant 1)."""
    tid = uuid.uuid4()
    conn_web.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                  attempt, error, pid, hostname)
           VALUES (%s, 'review16-exiting', 'm:f', 'failed', now(), now(), 1, 'gave up',
                   999999, 'elsewhere')""", (tid,))
    page = app_client.get(f"/tasks/{tid}")
    assert page.status_code == 200 and f"/tasks/{tid}/retry" not in page.text
    token = app_client.cookies.get("pgbg_csrf")  # the form a page of a finished one has
    retried = app_client.post(f"/tasks/{tid}/retry", data={"csrf": token},
                              follow_redirects=False)
    # observed: 303 "The task is queued again." while its process still runs
    assert retried.status_code == 409, retried.headers.get("location")
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.FAILED




# -- hostile values --------------------------------------------------------------------------

def hostile_row(conn: psycopg.Connection[Any], column: str, value: str) -> uuid.UUID:
    tid = uuid.uuid4()
    conn.execute(f"""INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                            finished_at, attempt, {column})
                     VALUES (%s, 'review16-hostile', 'm:f', 'succeeded', now(), now(), now(),
                             1, %s::jsonb)""", (tid, value))
    return tid


@pytest.mark.parametrize("column", ["args", "kwargs", "result"])
def test_deeply_nested_json_is_shown_not_a_500(app_client: Any, conn_web: Any,
                                               column: str) -> None:
    """Valid JSON, 5,000 arrays deep (10 kB, under the 20 kB cut): PostgreSQL stores it;
    Python's json.loads raises RecursionError, which Big.pretty does not catch."""
    depth = 5000
    inner = "[" * depth + "]" * depth
    value = {"args": inner, "kwargs": '{"k": ' + inner + "}", "result": inner}[column]
    tid = hostile_row(conn_web, column, value)
    page = app_client.get(f"/tasks/{tid}")
    # observed: 500 "an unexpected error" (RecursionError in data.Big.pretty)
    assert page.status_code == 200, page.text[-300:]
    assert "[[[[" in page.text


def test_json_numbers_are_shown_as_stored(app_client: Any, conn_web: Any) -> None:
    """jsonb keeps numbers exactly; the page re-parses them as floats."""
    tid = hostile_row(conn_web, "result",
                      '[0.10000000000000000000001, 123456789012345678901234567890.5]')
    page = app_client.get(f"/tasks/{tid}")
    assert page.status_code == 200
    shown = re.search(r'<pre class="json" id="task-result">(.*?)</pre>', page.text, re.S)
    assert shown
    # observed: 0.1 and 1.2345678901234568e+29 (json.loads to float, then dumps)
    for number in ("0.10000000000000000000001", "123456789012345678901234567890.5"):
        assert number in shown[1], shown[1]

# -- the command line ----------------------------------------------------------------------

@pytest.mark.parametrize("level", ["bogus", "TRACE"])
def test_a_bad_log_level_is_one_line_not_a_traceback(web_db: str, level: str) -> None:
    env = {**os.environ, "PGBG_DATABASE_URL": web_db}
    env.pop("PGBG_WEB_PASSWORD", None)
    done = subprocess.run([sys.executable, "-m", "pgbg", "web", "--port", str(free_port()),
                           "--log-level", level], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    # observed: a traceback ending "ValueError: Unknown level: 'BOGUS'" (setup_logging)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    assert done.stderr.strip().startswith("error:") and "log" in done.stderr.lower()


@pytest.fixture
def second_db(server_url: str, template_url: str) -> Iterator[str]:
    from urllib.parse import urlsplit

    from conftest import with_database

    name = f"pgbg_review16_second_{os.getpid()}"
    template = urlsplit(template_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_embedded_dashboards_act_on_their_own_databases(web_db: str, second_db: str,
                                                            conn_web: Any) -> None:
    """A host app mounting one dashboard per database (production, staging): each page
    reads its own database (its pool), but actions go through the process-wide
    ``pgbg.configure`` that the last ``create_app(database_url=...)`` set."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from pgbg.web import create_app

    pgbg.configure(web_db)  # the host app's own queue
    first = create_app(database_url=web_db, password=None)
    second = create_app(database_url=second_db, password=None)
    host = Starlette(routes=[Mount("/one", app=first), Mount("/two", app=second)])
    tid = queued_later(conn_web)
    try:
        with TestClient(host, raise_server_exceptions=False) as client:
            page = client.get(f"/one/tasks/{tid}")
            assert page.status_code == 200  # read from web_db
            removed = client.post(f"/one/tasks/{tid}/remove",
                                  data={"csrf": client.cookies.get("pgbg_csrf")},
                                  follow_redirects=False)
        # observed: 404 "no task with id ..." (the action looked in second_db)
        assert removed.status_code == 303, removed.text[-300:]
        assert conn_web.execute("SELECT status::text FROM pgbg.task WHERE id = %s",
                                (tid,)).fetchone() == ("cancelled",)
    finally:
        pgbg.configure(web_db)


def test_create_app_leaves_the_host_apps_database_alone(web_db: str, second_db: str) -> None:
    """``create_app(database_url=...)`` reconfigures the whole process: the host app's own
    ``pgbg.enqueue`` now queues in the dashboard's database."""
    from pgbg import db
    from pgbg.web import create_app

    pgbg.configure(web_db)
    before = db.database_url()
    try:
        create_app(database_url=second_db, password=None)
        # observed: the second database's URL
        assert db.database_url() == before
    finally:
        pgbg.configure(web_db)


def test_bulk_retry_queues_no_more_than_the_confirmation_said(app_client: Any,
                                                               conn_web: Any) -> None:
    """The confirmation page asks "Queue again 2 failed tasks matching ...?"; by the time
    the button is pressed, 3 more have failed. Pressing it must not queue 5."""
    kind = f"review16-bulk-{uuid.uuid4().hex[:6]}"
    insert = """INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                       finished_at, attempt, error)
                SELECT gen_random_uuid(), %s, 'm:f', 'failed', now(), now(), now(), 1, 'boom'
                  FROM generate_series(1, %s)"""
    conn_web.execute(insert, (kind, 2))
    confirm = app_client.get("/tasks/retry", params={"type": kind})
    assert re.search(r'id="retry-count">2<', confirm.text), confirm.text[-500:]
    conn_web.execute(insert, (kind, 3))  # meanwhile
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                             confirm.text))
    done = app_client.post("/tasks/retry", data=fields)
    assert done.status_code == 200
    queued = conn_web.execute("SELECT count(*) FROM pgbg.task WHERE task_type = %s "
                              "AND status = 'queued'", (kind,)).fetchone()[0]
    # observed: "5 tasks queued again" after the user agreed to 2
    assert queued <= 2, re.sub(r"\s+", " ", re.sub("<[^>]+>", " ", done.text))[-200:]


def test_a_password_that_is_not_utf8_is_refused_at_start_not_a_500_per_request(
        web_db: str) -> None:
    """PGBG_WEB_PASSWORD set in a Latin-1 shell ("pässword" as bytes 0xE4): Python holds it
    as a lone surrogate, and every request's compare then raises UnicodeEncodeError."""
    server = WebServer(web_db, password="p\udce4ssword", wait=False)
    try:
        def settled() -> bool:
            if server.proc.poll() is not None:
                return True
            try:
                httpx.get(server.url + "/healthz", timeout=5)
            except httpx.TransportError:
                return False
            return True

        wait_for(settled, timeout=60, message="pgbg web to answer or exit")
        if server.proc.poll() is None:
            with server.client(auth=False) as client:
                answer = client.get("/", auth=("admin", "anything"))
            # observed: 500 Internal Server Error for every request but /healthz
            assert answer.status_code == 401, answer.text[:200]
        else:
            server._reader.join(timeout=10)
            log = "".join(server.log)
            assert "Traceback" not in log and "PGBG_WEB_PASSWORD" in log, log[-800:]
    finally:
        server.stop()

# -- CSRF ----------------------------------------------------------------------------------

def test_two_dashboards_on_one_host_do_not_break_each_others_forms(
        open_server: WebServer, start_server: Any, conn_web: Any) -> None:
    """Cookies do not keep to a port: a read-only ``pgbg web`` on :8478 beside the one on
    :8477 (or two SSH tunnels, or two mounts of ``create_app`` in one host app) share the
    browser's ``pgbg_csrf`` cookie. Each finds the other's token unsigned by its own key and
    replaces it, so a form of the first is refused once the second was opened."""
    other = start_server("--read-only", password=None)
    tid = queued_later(conn_web)
    with httpx.Client(timeout=30) as browser:  # one cookie jar, as a browser has
        page = browser.get(f"{open_server.url}/tasks/{tid}")
        assert page.status_code == 200
        assert browser.get(f"{other.url}/").status_code == 200  # another tab
        removed = browser.post(f"{open_server.url}/tasks/{tid}/remove",
                               data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    # observed: 403 "the form's security token is missing or wrong: reload the page"
    assert removed.status_code == 303, removed.text[-400:]
    assert pgbg.get_task(tid).status == pgbg.TaskStatus.CANCELLED


# -- what the pages say ----------------------------------------------------------------------

def test_overview_counts_failed_tasks_still_exiting_with_the_finished_ones(
        app_client: Any, conn_web: Any) -> None:
    kind = f"review16-count-{uuid.uuid4().hex[:6]}"
    conn_web.execute(
        """INSERT INTO pgbg.task (id, task_type, func, status, queued_at, started_at,
                                  finished_at, attempt, error, pid)
           SELECT gen_random_uuid(), %s, 'm:f', 'failed', now(), now(),
                  CASE WHEN i = 1 THEN NULL ELSE now() END, 1, 'boom', 999999
             FROM generate_series(1, 4) i""", (kind,))
    overview = app_client.get("/")
    assert overview.status_code == 200
    row = re.search(rf'<tr><td class="type">{kind}</td>(.*?)</tr>', overview.text, re.S)
    assert row, "the type's row"
    cells = [re.sub("<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row[1])]
    statuses = [s.value for s in pgbg.TaskStatus]
    listed = app_client.get("/tasks", params={"type": kind, "status": "failed",
                                              "since": "24h"})
    assert len(set(re.findall(r'href="/tasks/([0-9a-f-]{36})"', listed.text))) == 4
    # observed: 3 (the finished counts replace the live ones: the failed task whose process
    # still exits is dropped), while the cell's own link lists 4
    assert cells[statuses.index("failed")] == "4", dict(zip(statuses, cells, strict=True))


# -- the browser -----------------------------------------------------------------------------

def test_a_task_page_left_open_says_when_its_task_is_gone(open_server: WebServer,
                                                          conn_web: Any) -> None:
    """A queued task's page polls (its fragment, every 2 s). The task is then purged or
    removed by someone else: the poll answers 404, which htmx neither swaps nor shows, so
    the page claims "queued" forever and the console fills with errors."""
    import shutil

    chromium = os.environ.get("PGBG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium not found")
    from playwright.sync_api import sync_playwright

    from web.test_browser import ARGS

    tid = queued_later(conn_web)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS,
                                             headless=True)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type in ("error", "warning") else None)
            page.goto(f"{open_server.url}/tasks/{tid}")
            page.wait_for_selector("#task-status:has-text('queued')")
            conn_web.execute("DELETE FROM pgbg.task WHERE id = %s", (tid,))
            # observed: never; the page still says "queued", and
            # "console error: Failed to load resource: ... 404 (Not Found)" every 2 s
            try:
                page.wait_for_selector(f"text=no task with id {tid}", timeout=20_000)
                gone = True
            except Exception:
                gone = False
            still = page.inner_text("#task-status") if page.query_selector("#task-status") else ""
        finally:
            browser.close()
    assert gone, (still, problems[:3])
    assert problems == []
