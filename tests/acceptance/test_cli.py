"""The `pgbg` command as a user runs it: from any directory, with clear errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import with_database

PGBG = [sys.executable, "-m", "pgbg"]
UNREACHABLE = "postgresql://app:s3cret@127.0.0.1:9/app"


def _pgbg_script() -> list[str]:
    script = Path(sys.executable).parent / "pgbg"
    return [str(script)] if script.exists() else PGBG


def run(args: list[str], env: dict[str, str], cwd: Path,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_pgbg_script(), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PGBG_DATABASE_URL", "DATABASE_URL", "PGBG_HOME")}
    env.update(overrides)
    return env


def test_migrate_from_another_directory(server_url: str, tmp_path: Path) -> None:
    name = f"pgbg_fresh_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'COMMENT ON DATABASE "{name}" IS \'app\'')
    url = with_database(server_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as app:  # the host app's own Alembic table
            app.execute("CREATE TABLE public.alembic_version (version_num text primary key)")
            app.execute("INSERT INTO public.alembic_version VALUES ('app_rev_1')")
        done = run(["migrate"], _env(PGBG_DATABASE_URL=url), tmp_path)
        assert done.returncode == 0, done.stderr
        assert "pgbg schema is at revision" in done.stdout
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM pgbg.task").fetchone() == (0,)
            assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
                ("app_rev_1",)]
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_sql_prints_ddl_without_a_database(tmp_path: Path) -> None:
    done = run(["migrate", "--sql"], _env(PGBG_DATABASE_URL=UNREACHABLE), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE pgbg.task" in done.stdout
    assert "CREATE FUNCTION pgbg.task_claim" in done.stdout


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    """An empty PGBG_HOME outside pytest's tmp_path: the embedded server runs as another
    user, who must traverse its parents, and every pytest session that starts (another
    suite on the same machine, say) resets /tmp/pytest-of-<user> to 0700."""
    home = Path(tempfile.mkdtemp(prefix="pgbg-demo-home-"))
    yield home / "home"
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_demo_on_a_fresh_embedded_server(tmp_path: Path, fresh_home: Path) -> None:
    home = fresh_home
    done = run(["demo", "--tasks", "12"], _env(PGBG_HOME=str(home)), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "what the task rows say" in done.stdout
    assert re.search(r"thumbnail\s+│\s+9\s+│\s+9\s+│\s+0\s+│\s+[123]\s+│\s+3", done.stdout), \
        done.stdout
    assert re.search(r"report\s+│\s+3\s+│\s+3\s+│\s+0\s+│\s+1\s+│\s+1", done.stdout), done.stdout
    worker_pid = int(re.search(r"worker: pid (\d+)", done.stdout)[1])  # type: ignore[index]
    assert not Path(f"/proc/{worker_pid}").exists()  # the demo leaves no process behind
    postmaster = home / "pgdata" / "postmaster.pid"
    assert not postmaster.exists()  # and stopped the embedded server it started


def test_db_url_masks_the_password(tmp_path: Path) -> None:
    done = run(["db", "url"], _env(PGBG_DATABASE_URL=UNREACHABLE), tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == "postgresql://app:***@127.0.0.1:9/app"


@pytest.mark.parametrize("command", [["migrate"], ["worker"]])
def test_unreachable_database_is_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    done = run(command, _env(PGBG_DATABASE_URL=UNREACHABLE), tmp_path, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot connect to postgresql://app:***@127.0.0.1:9/app")


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    done = run(["worker", "--concurrency", "0"], _env(PGBG_DATABASE_URL=UNREACHABLE), tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr


def test_every_command_has_help_with_an_example() -> None:
    import typer.main
    from typer.testing import CliRunner

    from pgbg.cli import app

    def leaves(group: Any, prefix: list[str]) -> list[list[str]]:
        found = []
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):  # a sub-group such as `pgbg db`
                found += leaves(cmd, [*prefix, name])
            else:
                found.append([*prefix, name])
        return found

    commands = leaves(typer.main.get_command(app), [])
    assert len(commands) >= 20
    runner = CliRunner()
    for command in commands:
        done = runner.invoke(app, [*command, "--help"])
        assert done.exit_code == 0, command
        assert "Example:" in done.output, f"pgbg {' '.join(command)} --help has no example"


@pytest.mark.slow
def test_bench_quick_runs_and_reports_every_workload(database_url: str, tmp_path: Path) -> None:
    def scratch_databases() -> Any:
        with psycopg.connect(database_url) as conn:
            return conn.execute("SELECT count(*) FROM pg_database "
                                "WHERE datname LIKE 'pgbg_bench_%'").fetchone()

    before = scratch_databases()
    done = run(["bench", "--quick", "--json"], _env(PGBG_DATABASE_URL=database_url), tmp_path,
               timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {tuple(sorted(r)) for r in rows} == {("note", "unit", "value", "workload")}
    names = {r["workload"] for r in rows}
    for expected in ("fork ceiling (the fork server)", "enqueue-single", "enqueue-bulk",
                     "process-noop", "process-noop CPU per task", "process-sleep-10ms",
                     "latency enqueue → start p50",
                     "wait_task wake p50", "terminate → gone p50", "deep process-noop",
                     "worker RSS growth", "process-noop behind a limited backlog"):
        assert expected in names
    imports = next(r for r in rows if r["workload"] == "imports meanwhile")
    assert "at most 1 at once" in imports["note"]  # the limit held throughout
    # rates and times are positive; a growth (a difference) may be negative
    assert all(r["value"] >= 0 for r in rows if r["workload"] != "worker RSS growth")
    assert scratch_databases() == before  # its scratch database is gone again
