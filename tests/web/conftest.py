"""Fixtures of the dashboard's tests: a database per module, a real ``pgbg web`` server
process (started on a free port, stopped by pid) and a real worker process against it."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from conftest import TESTS_DIR, WorkerProcess, wait_for, with_database

import pgbg

_counter = itertools.count()
USER, PASSWORD = "admin", "s3cret-pässword"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebServer:
    """A real ``pgbg web`` process; its output is collected in ``log``."""

    def __init__(self, database_url: str, *extra: str, password: str | None = PASSWORD,
                 env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "PGBG_DATABASE_URL": database_url, "PGBG_WEB_USER": USER,
                   **(env or {})}
        environ.pop("PGBG_WEB_PASSWORD", None)
        if password is not None:
            environ["PGBG_WEB_PASSWORD"] = password
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR),
                                                              environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgbg", "web", "--port", str(self.port), *extra],
            env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        if wait:
            wait_for(self._answers, timeout=60, message="pgbg web to answer")

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            sys.stderr.write(line)

    def _answers(self) -> bool:
        assert self.proc.poll() is None, "pgbg web exited:\n" + "".join(self.log)
        try:
            httpx.get(self.url + "/healthz", timeout=5)
        except httpx.TransportError:
            return False
        return True

    def client(self, auth: bool = True) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            auth=(USER, PASSWORD) if auth else None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)


@pytest.fixture(scope="module")
def web_db(server_url: str, template_url: str) -> Iterator[str]:
    """A migrated database for the whole module (its server and worker live that long)."""
    name = f"pgbg_web_{os.getpid()}_{next(_counter)}"
    template = urlsplit(template_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield with_database(server_url, name)
    pgbg.configure()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _configured(request: pytest.FixtureRequest) -> Iterator[None]:
    """This process (which queues the tests' tasks) uses the module's database."""
    if "web_db" in request.fixturenames:
        pgbg.configure(request.getfixturevalue("web_db"))
    yield


@pytest.fixture(scope="module")
def start_server(web_db: str) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(*extra: str, **options: Any) -> WebServer:
        server = WebServer(web_db, *extra, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_worker(web_db: str) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(web_db, 3)
    yield worker
    worker.stop()


def screenshots_dir() -> Path:
    path = Path(os.environ.get("PGBG_SCREENSHOTS") or
                Path(os.environ.get("TMPDIR", "/tmp")) / f"pgbg-screenshots-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def conn_web(web_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(web_db, autocommit=True) as connection:
        yield connection
