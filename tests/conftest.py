"""Shared fixtures: a real PostgreSQL, one migrated template, a fresh database per test.

The server is the embedded one (in a private PGBG_HOME, stopped at the end) unless
PGBG_TEST_DATABASE_URL names a server where the tests may create databases.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import pgbg
from pgbg import db, embedded, migrate, queries

TESTS_DIR = Path(__file__).parent
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the poll-only pass (PGBG_NO_LISTEN=1) the tests of LISTEN itself do not apply."""
    if not db.listen_enabled():
        skip = pytest.mark.skip(reason="tests LISTEN/NOTIFY; this pass is poll-only")
        for item in items:
            if "listen" in item.keywords:
                item.add_marker(skip)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def claim_concurrently(url: str, *, claimers: int = 8, rounds: int = 5,
                       batch: int = 4) -> list[pgbg.BackgroundTask]:
    """``claimers`` connections, released together by a barrier, each claiming ``batch``
    tasks ``rounds`` times: everything they claimed (errors re-raised)."""
    barrier = threading.Barrier(claimers)
    claimed: list[pgbg.BackgroundTask] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claimer() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                barrier.wait(timeout=30)
                for _ in range(rounds):
                    got = queries.task_claim(conn, uuid.uuid4(), "test", batch)
                    with lock:
                        claimed.extend(got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), "a claimer hangs"
    return claimed


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    explicit = os.environ.get("PGBG_TEST_DATABASE_URL")
    if explicit:
        yield db.libpq_url(explicit)
        return
    # A server of this session's own: concurrent test runs never stop each other's.
    home = Path(tempfile.mkdtemp(prefix=f"pgbg-tests-{os.getuid()}-"))
    previous = os.environ.get("PGBG_HOME")
    os.environ["PGBG_HOME"] = str(home)
    try:
        srv, _started = embedded.ensure_running()
        yield srv.url
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)
    finally:
        if previous is None:
            os.environ.pop("PGBG_HOME", None)
        else:
            os.environ["PGBG_HOME"] = previous


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    name = f"pgbg_template_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    migrate.upgrade(url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    """A freshly migrated database of its own; pgbg is configured to use it."""
    name = f"pgbg_test_{os.getpid()}_{next(_counter)}"
    template = urlsplit(template_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = with_database(server_url, name)
    pgbg.configure(url)
    yield url
    pgbg.configure()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def pgbg_connections(conn: psycopg.Connection[Any]) -> int:
    """This process's pgbg connections to the test database (a worker's are named
    ``pgbg worker …``)."""
    from pgbg import db

    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                       "AND datname = current_database()",
                       (db.versioned_name("pgbg"),)).fetchone()
    assert row is not None
    return int(row[0])


def count_tasks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pgbg.task").fetchone()
    assert row is not None
    return int(row[0])


class Driver:
    """An in-process worker driven step by step (the test's main thread does the forking)."""

    def __init__(self, worker: pgbg.Worker) -> None:
        self.worker = worker

    def until(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Step the worker until ``predicate`` holds."""

        def step() -> Any:
            value = predicate()
            if not value:
                self.worker.run_once(timeout=0.05)
            return value

        return wait_for(step, timeout, interval=0, message="the worker to get there")

    def until_done(self, *results: pgbg.Result, timeout: float = 30.0) -> None:
        self.until(lambda: all(pgbg.get_task(r).complete for r in results), timeout)


@pytest.fixture
def make_worker(database_url: str) -> Iterator[Callable[..., Driver]]:
    created: list[pgbg.Worker] = []

    def make(concurrency: int = 2, **options: Any) -> Driver:
        options.setdefault("poll_interval", 0.5)
        worker = pgbg.Worker(concurrency, **options)
        created.append(worker)
        return Driver(worker)

    yield make
    for worker in created:
        worker.stop(force=True)
        worker.run()


def worker_env(database_url: str) -> dict[str, str]:
    env = {**os.environ, "PGBG_DATABASE_URL": database_url}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    return env


class WorkerProcess:
    """A real ``pgbg worker`` process; stopped by pid. Its log lines are collected."""

    def __init__(self, database_url: str, concurrency: int, *extra: str,
                 entry: tuple[str, ...] = ("pgbg", "worker")) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *entry, "--concurrency", str(concurrency),
             # poll-only, the poll is the only wake-up: poll often (a test's own
             # --poll-interval in ``extra`` comes later and wins)
             "--poll-interval", "1" if db.listen_enabled() else "0.2",
             "--log-level", "info", *extra],
            env=worker_env(database_url), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            sys.stderr.write(line)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # soft: running tasks may finish
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # a second request stops at once
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._reader.join(timeout=10)  # no thread may outlive the test: later tests fork


@pytest.fixture
def worker_process(database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(concurrency: int = 2, *extra: str, **options: Any) -> WorkerProcess:
        process = WorkerProcess(database_url, concurrency, *extra, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class TcpProxy:
    """A TCP proxy process between a worker and the database (tests/pgbg_tcp_proxy.py):
    ``url`` goes through it; ``cut()`` closes its connections, ``freeze()`` stalls them
    like a network that silently stopped, ``thaw()`` lets them go on."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(database_url)
        host, port = str(params.get("host") or "/tmp"), str(params.get("port") or 5432)
        upstream = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"
        portfile = workdir / "proxy.port"
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS_DIR / "pgbg_tcp_proxy.py"), str(portfile), upstream],
            stdin=subprocess.DEVNULL)
        listening = wait_for(lambda: portfile.exists() and portfile.read_text(),
                             message="the proxy to listen")
        user = params.get("user") or "postgres"
        self.url = f"postgresql://{user}@127.0.0.1:{listening}/{params['dbname']}"
        self.frozen = False

    def cut(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def freeze(self) -> None:
        if not self.frozen:
            self.frozen = True
            self.proc.send_signal(signal.SIGUSR2)

    def thaw(self) -> None:
        if self.frozen:
            self.frozen = False
            self.proc.send_signal(signal.SIGUSR2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def tcp_proxy(database_url: str, tmp_path: Path) -> Iterator[TcpProxy]:
    proxy = TcpProxy(database_url, tmp_path)
    yield proxy
    proxy.stop()
