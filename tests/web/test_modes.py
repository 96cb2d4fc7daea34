"""Read-only mode, no password, a refused non-loopback bind, the database down."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest

import pgbg
from web.conftest import PASSWORD, WebServer, free_port

UNREACHABLE = "postgresql://app:db-s3cret@127.0.0.1:9/app"


def test_read_only_shows_no_buttons_and_refuses_posts(start_server: Any) -> None:
    server = start_server("--read-only")
    queued = pgbg.enqueue("pgbg_test_web_tasks:succeed", args=[1], task_type="web-ro",
                          delay=3600)
    with server.client() as client:
        page = client.get(f"/tasks/{queued.id}")
        assert page.status_code == 200
        assert "read-only" in page.text
        assert "<form method=\"post\"" not in page.text and "<button" not in page.text
        tasks = client.get("/tasks", params={"status": "failed"})
        assert "/tasks/retry" not in tasks.text
        assert client.get("/tasks/retry", params={"status": "failed"}).status_code == 403
        # even with a valid token, nothing is done
        token = client.cookies.get(f"pgbg_csrf_{server.port}")  # named per port
        assert token
        for path in (f"/tasks/{queued.id}/remove", f"/tasks/{queued.id}/terminate",
                     "/tasks/retry"):
            response = client.post(path, data={"csrf": token})
            assert response.status_code == 403, path
            assert "read-only" in response.text
    assert pgbg.get_task(queued).status == pgbg.TaskStatus.QUEUED
    pgbg.remove_task_from_queue(queued)


def test_without_a_password_no_authentication(start_server: Any) -> None:
    server = start_server(password=None)
    with server.client(auth=False) as client:
        assert client.get("/").status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_non_loopback_bind_needs_a_password(host: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGBG_WEB_PASSWORD"}
    done = subprocess.run([sys.executable, "-m", "pgbg", "web", "--host", host, "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: refusing to listen on {host} without a password: set PGBG_WEB_PASSWORD "
        "(or listen on 127.0.0.1)"]


def test_database_down(start_server: Any) -> None:
    server = WebServer(UNREACHABLE, wait=False)
    try:
        from conftest import wait_for

        wait_for(server._answers, timeout=60, message="pgbg web to answer")
        with server.client(auth=False) as anonymous:
            health = anonymous.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert "db-s3cret" not in health.text and "127.0.0.1" not in health.text
        with server.client() as client:
            for path in ("/", "/tasks", f"/tasks/{uuid.uuid4()}", "/queue", "/workers",
                         "/periodic"):
                page = client.get(path)
                assert page.status_code == 503, path
                assert "Database unavailable" in page.text
                assert "cannot connect to postgresql://app:***@127.0.0.1:9/app" in page.text
                assert "db-s3cret" not in page.text and "Traceback" not in page.text
            live = client.get("/", headers={"HX-Request": "true"})  # a fragment's poll
            assert live.status_code == 503
            assert live.text.startswith('<div id="live" hx-get="/"')  # it polls on
            assert "refreshes once the database answers" in live.text
            metrics = client.get("/metrics")
            assert metrics.status_code == 503
            assert re.search(r"^pgbg_up 0$", metrics.text, re.M)
            token = client.cookies.get(f"pgbg_csrf_{server.port}")
            action = client.post(f"/tasks/{uuid.uuid4()}/terminate", data={"csrf": token})
            assert action.status_code == 503
            assert "db-s3cret" not in action.text
        assert not any("db-s3cret" in line for line in server.log)
        assert PASSWORD not in "".join(server.log)
    finally:
        server.stop()


def test_a_port_in_use_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "pgbg", "web", "--port", str(port)],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
