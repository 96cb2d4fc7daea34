"""The documented PgBouncer deployment, for real: a PgBouncer in transaction pooling mode
with two server connections, so consecutive transactions of one client land on different
server connections; workers run with ``--no-listen`` and everything else with
``PGBG_NO_LISTEN=1``, as the README says.

Skipped when there is no ``pgbouncer`` binary, except in CI (``CI`` set), where its absence
is a failure: CI installs it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import WorkerProcess, wait_for, with_database
from psycopg.conninfo import conninfo_to_dict

import pgbg
from pgbg import embedded, migrate

POOL_SIZE = 2
PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """A PgBouncer of the test's own (config in a temp dir), started and stopped by pid."""

    def __init__(self, server_url: str) -> None:
        assert PGBOUNCER is not None
        upstream = conninfo_to_dict(server_url)
        self.user = str(upstream.get("user") or pwd.getpwuid(os.getuid()).pw_name)
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgbg-pgbouncer-"))
        target = " ".join(f"{key}={upstream[key]}" for key in ("host", "port") if key in upstream)
        lines = [
            "[databases]",
            f"* = {target} user={self.user}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = any",  # the upstream server trusts its socket; no password anywhere
            "pool_mode = transaction",
            f"default_pool_size = {POOL_SIZE}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 200",
            f"logfile = {self.dir / 'pgbouncer.log'}",
        ]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            run_as = embedded.SERVICE_USER
            try:
                entry = pwd.getpwnam(run_as)
            except KeyError:
                run_as, entry = "nobody", pwd.getpwnam("nobody")
            lines.append(f"user = {run_as}")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.ini = self.dir / "pgbouncer.ini"
        self.ini.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([PGBOUNCER, str(self.ini)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._accepts, timeout=30, message="PgBouncer to accept connections")

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _accepts(self) -> bool:
        if self.proc.poll() is not None:
            assert self.proc.stderr is not None
            raise AssertionError(f"PgBouncer exited: {self.proc.stderr.read().decode()!r} "
                                 f"{self.log()!r}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2,
                                 prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()  # by pid: Popen signals its own child
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    if PGBOUNCER is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed, and CI must run this module")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    bouncer = PgBouncer(server_url)
    yield bouncer
    bouncer.stop()


@pytest.fixture
def bounced(pgbouncer: PgBouncer, database_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test database through PgBouncer; pgbg (this process and the ones it starts) is
    pointed at it in poll-only mode."""
    name = str(conninfo_to_dict(database_url)["dbname"])
    url = pgbouncer.url(name)
    monkeypatch.setenv("PGBG_NO_LISTEN", "1")
    pgbg.configure(url, listen=False)
    yield url
    pgbg.configure(database_url)


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGBG_DATABASE_URL": url, "PGBG_NO_LISTEN": "1"}
    return subprocess.run([sys.executable, "-m", "pgbg", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def _server_backends(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND pid <> pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
def test_the_documented_pgbouncer_deployment(bounced: str, conn: psycopg.Connection[Any],
                                             tmp_path: Path) -> None:
    workers = [WorkerProcess(bounced, 2, "--no-listen", "--poll-interval", "0.2")]
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PGBG_NO_LISTEN")  # ``--no-listen`` alone is enough for a worker
        workers.append(WorkerProcess(bounced, 2, "--no-listen", "--poll-interval", "0.2"))
    try:
        # enough of each statement that psycopg would prepare it (its threshold is 5)
        singles = [pgbg.enqueue(tasks.add, args=(i, i), task_type="add") for i in range(20)]
        many = pgbg.enqueue_many(tasks.add, [(i, 1) for i in range(20)], task_type="many")
        limited = [pgbg.run_in_background_with_limits(tasks.work, "a", 0, {"a": 1}, 0.05)
                   for _ in range(6)]
        retried = pgbg.enqueue(tasks.fail_until_attempt, args=(3,), task_type="retry",
                               max_attempts=3)
        # a task's own connection (a child of the worker that was given only --no-listen)
        chatty = [pgbg.enqueue(tasks.record_info_times, args=(12,), task_type="chatty")
                  for _ in range(4)]
        for i, result in enumerate(singles):
            assert pgbg.wait_task(result, timeout=120).result == 2 * i
        for i, result in enumerate(many):
            assert pgbg.wait_task(result, timeout=120).result == i + 1
        for result in limited:
            assert pgbg.wait_task(result, timeout=120).completed_successfully
        for result in chatty:
            ended_chatty = pgbg.wait_task(result, timeout=120)
            assert (ended_chatty.result, ended_chatty.info) == (12, "step 11"), ended_chatty
        done = pgbg.wait_task(retried, timeout=120)
        assert (done.status, done.attempt, done.result) == (pgbg.TaskStatus.SUCCEEDED, 3, 3)

        # terminate a running task
        release = tmp_path / "never"
        blocked = pgbg.run_in_background(tasks.block_until, "block", str(release))
        wait_for(lambda: pgbg.get_task(blocked).pid, timeout=60, message="the task to start")
        ended = pgbg.terminate_background(blocked, timeout=120)
        assert ended.status is pgbg.TaskStatus.TERMINATED

        # a periodic task, fired by the poll-only workers
        pgbg.add_periodic("tick", tasks.add, [2, 3], every=1)
        wait_for(lambda: conn.execute(
            "SELECT count(*) FROM pgbg.task WHERE periodic = 'tick' AND status = 'succeeded'"
        ).fetchone()[0] >= 2, timeout=120, message="two periods of the periodic task")
        pgbg.remove_periodic("tick")

        # the CLI, through PgBouncer too
        listed = _cli(bounced, "ls", "--json", "--limit", "200")
        assert listed.returncode == 0, listed.stderr
        assert {str(r.id) for r in singles} <= {t["id"] for t in json.loads(listed.stdout)}
        shown = _cli(bounced, "show", "--json", str(retried.id))
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["task"]["attempt"] == 3

        # three clients and more shared two server connections: transactions did hop
        assert _server_backends(conn) <= POOL_SIZE
        assert all(w.proc.poll() is None for w in workers)
    finally:
        for worker in workers:
            worker.stop()
    for worker in workers:
        assert not any("prepared statement" in line for line in worker.log), worker.log
    statuses = dict(conn.execute("SELECT status::text, count(*) FROM pgbg.task GROUP BY 1"))
    assert set(statuses) <= {"succeeded", "terminated"}, statuses


def test_migrate_through_pgbouncer(pgbouncer: PgBouncer, server_url: str) -> None:
    name = f"pgbg_bounced_migrate_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        for _ in range(3):  # again and again: no lock may stay behind on a server connection
            migrate.upgrade(pgbouncer.url(name))
        with psycopg.connect(with_database(server_url, name)) as direct:
            assert direct.execute("SELECT version_num FROM pgbg.alembic_version").fetchone() \
                == (migrate.head_revision(),)
            assert direct.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                  ).fetchone() == (0,)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_worker_no_listen_alone_makes_its_tasks_poll_only_too(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGBG_NO_LISTEN", raising=False)
    monkeypatch.delenv("PGBG_PREPARE", raising=False)
    worker = WorkerProcess(database_url, 1, "--no-listen", "--poll-interval", "0.2")
    try:
        result = pgbg.enqueue(tasks.connection_settings, task_type="t")
        assert pgbg.wait_task(result, timeout=120).result == {"listen": False, "prepare": False}
    finally:
        worker.stop()


def test_the_async_api_through_pgbouncer(bounced: str, conn: psycopg.Connection[Any]) -> None:
    """pgbg.aio's own connection and an application's AsyncConnection, behind a
    transaction-pooling PgBouncer: nothing prepared, no session state, every call served."""
    import asyncio

    from pgbg import aio

    worker = WorkerProcess(bounced, 2, "--no-listen", "--poll-interval", "0.2")

    async def scenario() -> None:
        # enough of each statement that psycopg would prepare it (its threshold is 5)
        singles = [await aio.run_in_background(tasks.add, "add", i, i) for i in range(12)]
        many = await aio.enqueue_many(tasks.add, [(i, 1) for i in range(12)], task_type="m")
        removed = await aio.run_in_background_with_limits(tasks.add, "held", 0, {"x": 1}, 1, 1,
                                                          priority=-9)
        async with await psycopg.AsyncConnection.connect(bounced, prepare_threshold=None) as app:
            async with app.transaction():
                joined = await aio.enqueue(tasks.add, [20, 22], task_type="add",
                                           connection=app)
        assert any(q.task_id == str(removed.id) for q in await aio.get_queued_tasks())
        await aio.remove_task_from_queue(removed)
        for i, result in enumerate(singles):
            assert (await aio.wait_task(result, timeout=120)).result == 2 * i
        for i, result in enumerate(many):
            assert (await result.aget(timeout=120)) == i + 1
        assert await joined.aget(timeout=120) == 42
        assert (await aio.get_task(removed)).status is pgbg.TaskStatus.CANCELLED
        await aio.close()

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    assert not any("prepared statement" in line for line in worker.log), worker.log
