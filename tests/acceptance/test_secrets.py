"""The database password stays out of what a task can see, while a task can still use pgbg."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from conftest import WorkerProcess

import pgbg

PASSWORD = "Pw-" + uuid.uuid4().hex[:12] + "@x:y"


@pytest.fixture
def password_url(database_url: str, conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A URL for a role of its own that logs in with a password; on the tests' embedded
    server (trust authentication) that role is made to need it (scram-sha-256)."""
    role = f"pgbg_pw_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    hba: Path | None = None
    original = ""
    if not os.environ.get("PGBG_TEST_DATABASE_URL"):
        row = conn.execute("SHOW hba_file").fetchone()
        assert row is not None
        hba = Path(row[0])
        original = hba.read_text()
        hba.write_text(f"local all {role} scram-sha-256\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    url = database_url.replace("://postgres@", f"://{role}:{quote(PASSWORD, safe='')}@")
    assert url != database_url
    try:
        if hba is not None:  # the password is really needed now
            without = database_url.replace("://postgres@", f"://{role}@")
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(without, connect_timeout=10).close()
        psycopg.connect(url, connect_timeout=10).close()
        yield url
    finally:
        if hba is not None:
            hba.write_text(original)
            conn.execute("SELECT pg_reload_conf()")


def test_a_task_sees_no_password_yet_can_enqueue_and_wait(password_url: str) -> None:
    worker = WorkerProcess(password_url, 2)
    try:
        env = pgbg.run_in_background("pgbg_test_hostile:environment", "t")
        nested = pgbg.run_in_background("pgbg_test_hostile:enqueue_and_wait", "t", 2, 3)
        seen = env.get(timeout=60)
        assert nested.get(timeout=60) == 5  # the child connected, with the password
    finally:
        worker.stop()
    text = json.dumps(seen)
    for secret in (PASSWORD, quote(PASSWORD, safe="")):
        assert secret not in text
    assert "PGPASSWORD" not in seen
    assert not any(PASSWORD in line for line in worker.log)
