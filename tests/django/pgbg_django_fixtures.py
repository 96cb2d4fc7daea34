"""Django for the tests of pgbg.contrib.django: set up once per session (the example site's
settings plus a test app), a database migrated by ``manage.py migrate``'s code once per
session, copied for each test; real workers started as ``manage.py pgbg worker``.

Imported by each test module (``from pgbg_django_fixtures import ...``): a conftest.py here
would take the name ``conftest`` that the other tests import their helpers from.
Django 6 needs Python 3.12: without it these tests skip, unless PGBG_REQUIRE_DJANGO=1
(CI's Django pass), where its absence is an error.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

if os.environ.get("PGBG_REQUIRE_DJANGO") != "1":
    pytest.importorskip("django.tasks", reason="Django 6 needs Python 3.12 or later")

import django
from django.conf import settings
from django.db import connections
from psycopg.conninfo import conninfo_to_dict

import pgbg
from pgbg import db

HERE = Path(__file__).parent
SITE = HERE.parent.parent / "examples" / "django_site"
MANAGE = SITE / "manage.py"
SETTINGS = "pgbg_django_settings"
for _path in (str(SITE), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
django.setup()

from django.core.management import call_command  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from pgbg.contrib.django import transactions  # noqa: E402

setup_test_environment()  # the test client records templates and contexts
_counter = itertools.count()


def point_django_at(server_url: str, name: str) -> str:
    """Make DATABASES["default"] (and so pgbg, as the app's ``ready()`` does) use database
    ``name`` of the test server; return its URL."""
    params = conninfo_to_dict(server_url)
    entry = settings.DATABASES["default"]
    entry.update(NAME=name, USER=params.get("user", ""), PASSWORD=params.get("password", ""),
                 HOST=params.get("host", ""), PORT=params.get("port", ""))
    connections.close_all()
    transactions.install("default")
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


def _admin(server_url: str, sql: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def django_template(server_url: str) -> Iterator[str]:
    """An empty database brought up by ``migrate`` (Django's, the site's and pgbg's)."""
    name = f"pgbg_django_template_{os.getpid()}"
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}"')
    _admin(server_url, f'CREATE DATABASE "{name}"')
    point_django_at(server_url, name)
    call_command("migrate", verbosity=0)
    connections.close_all()
    pgbg.configure()  # no connection of ours may stay on a template
    yield name
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def django_db(server_url: str, django_template: str) -> Iterator[str]:
    """A migrated database of this test's own, used by Django and pgbg; its URL."""
    name = f"pgbg_django_{os.getpid()}_{next(_counter)}"
    _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{django_template}"')
    url = point_django_at(server_url, name)
    yield url
    connections.close_all()
    pgbg.configure()
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def site_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a ``manage.py`` process of the tests' site."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PGBG_")
           or key in ("PGBG_NO_LISTEN", "PGBG_HOME")}
    env.update(DJANGO_SETTINGS_MODULE=SETTINGS, DJSITE_DATABASE_URL=database_url,
               PYTHONPATH=os.pathsep.join([str(HERE), str(SITE)]), **extra)
    return env


def manage(database_url: str, *args: str, timeout: float = 120,
           **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MANAGE), *args], env=site_env(database_url, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=SITE,
                          stdin=subprocess.DEVNULL)


class SiteWorker:
    """``manage.py pgbg worker`` as a process of its own, stopped by pid."""

    def __init__(self, database_url: str, concurrency: int, *extra: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(MANAGE), "pgbg", "worker", "-c", str(concurrency),
             "--poll-interval", "1" if db.listen_enabled() else "0.2", "--log-level", "info",
             *extra],
            env=site_env(database_url, **env), cwd=SITE, stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            sys.stderr.write(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # the second: a hard stop
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._reader.join(timeout=10)


@pytest.fixture
def site_worker(django_db: str) -> Iterator[Callable[..., SiteWorker]]:
    started: list[SiteWorker] = []

    def start(concurrency: int = 2, *extra: str, **env: str) -> SiteWorker:
        worker = SiteWorker(django_db, concurrency, *extra, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def hold_file(tmp_path: Path) -> Path:
    """While this file exists every study import waits at its next series."""
    return tmp_path / "hold"


def count(url: str, sql: str = "SELECT count(*) FROM pgbg.task", *params: Any) -> int:
    """A count read on a connection of its own (what other sessions see: committed rows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])
