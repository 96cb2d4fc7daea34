"""pgbg's own connections: nothing session-bound in poll-only mode (PgBouncer), TCP
keepalives, and READ COMMITTED claims whatever the database's default isolation."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import Driver, claim_concurrently, wait_for
from psycopg.conninfo import conninfo_to_dict

import pgbg
from pgbg import db, queries


def _options(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    return {o.keyword.decode(): o.val.decode() if o.val is not None else None
            for o in conn.pgconn.info}


# -- prepared statements ---------------------------------------------------------------

def test_poll_only_connections_prepare_nothing(database_url: str) -> None:
    pgbg.configure(database_url, listen=False)
    with db.connect() as conn:
        assert conn.prepare_threshold is None
    with db.shared_connection() as conn:
        assert conn.prepare_threshold is None
    with pytest.raises(pgbg.TaskNotFound):
        pgbg.wait_task(uuid.uuid4(), timeout=5)  # starts the waiters' connection
    from pgbg import waiters

    assert waiters._current is not None and waiters._current.conn is not None
    assert waiters._current.conn.prepare_threshold is None


def test_pgbg_prepare_0_turns_preparing_off(database_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGBG_NO_LISTEN", raising=False)  # this test's own listening mode
    monkeypatch.delenv("PGBG_PREPARE", raising=False)
    with db.connect() as conn:
        assert conn.prepare_threshold is not None  # listening: preparing is worth it
    monkeypatch.setenv("PGBG_PREPARE", "0")
    with db.connect() as conn:
        assert conn.prepare_threshold is None


def test_prepare_follows_listen_unless_set(database_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGBG_PREPARE", raising=False)
    monkeypatch.setenv("PGBG_NO_LISTEN", "1")
    assert not db.prepare_enabled()
    monkeypatch.setenv("PGBG_PREPARE", "1")
    assert db.prepare_enabled()


# -- keepalives ------------------------------------------------------------------------

def test_connections_set_tcp_keepalives(database_url: str) -> None:
    with db.connect() as conn:
        options = _options(conn)
    assert {k: options[k] for k in db.KEEPALIVE} == db.KEEPALIVE
    # detected well within the worker's default lease of 30 s
    idle, interval, count = (int(db.KEEPALIVE[k]) for k in
                             ("keepalives_idle", "keepalives_interval", "keepalives_count"))
    assert idle + interval * count < 30
    assert int(db.KEEPALIVE["tcp_user_timeout"]) < 30_000


def test_keepalives_in_the_url_win(database_url: str) -> None:
    sep = "&" if "?" in database_url else "?"
    url = f"{database_url}{sep}keepalives_idle=42&tcp_user_timeout=12345"
    with db.connect(url) as conn:
        options = _options(conn)
    assert options["keepalives_idle"] == "42"
    assert options["tcp_user_timeout"] == "12345"
    assert options["keepalives_count"] == db.KEEPALIVE["keepalives_count"]
    assert conninfo_to_dict(url)["keepalives_idle"] == "42"


# -- isolation -------------------------------------------------------------------------

@pytest.fixture
def repeatable_read(database_url: str) -> Iterator[str]:
    """The test database with ``default_transaction_isolation = 'repeatable read'`` (new
    connections pick it up)."""
    name = str(conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation "
                      "= 'repeatable read'")
    with psycopg.connect(database_url) as check:
        assert check.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
    yield database_url


def _claim(conn: psycopg.Connection[Any], n: int = 1) -> list[pgbg.BackgroundTask]:
    return queries.task_claim(conn, uuid.uuid4(), "test", n)


def test_held_claim_blocks_a_second_under_repeatable_read(repeatable_read: str) -> None:
    _held_claim_blocks_a_second(repeatable_read)


def test_held_claim_blocks_a_second_under_serializable_from_pgoptions(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c default_transaction_isolation=serializable")
    with psycopg.connect(database_url) as check:
        assert check.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
    _held_claim_blocks_a_second(database_url)


def _held_claim_blocks_a_second(url: str) -> None:
    first = pgbg.run_in_background_with_limits(tasks.add, "a", 0, {"a": 1}, 1, 1)
    pgbg.run_in_background_with_limits(tasks.add, "a", 0, {"a": 1}, 2, 2)
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as other:
        assert [t.id for t in _claim(holder, 5)] == [first.id]  # its transaction stays open
        second: list[pgbg.BackgroundTask] = []
        thread = threading.Thread(target=lambda: second.extend(_claim(other, 5)))
        thread.start()
        with psycopg.connect(url, autocommit=True) as watcher:
            wait_for(lambda: watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone() == (1,), message="the second claimer to wait for the claim lock")
        holder.commit()
        thread.join(timeout=30)
    assert second == []  # a snapshot taken before the lock wait would have claimed it


def test_concurrent_claimers_hold_a_limit_of_one_under_repeatable_read(
        repeatable_read: str) -> None:
    for i in range(40):
        pgbg.run_in_background_with_limits(tasks.add, "a", 0, {"a": 1}, i, i)
    claimed = claim_concurrently(repeatable_read)
    assert Counter(t.task_type for t in claimed) == {"a": 1}


def test_pgbg_connections_begin_read_committed(repeatable_read: str) -> None:
    with db.connect(autocommit=False) as conn:
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
    with db.connect() as conn, conn.transaction():
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)


def test_a_worker_runs_limited_tasks_under_repeatable_read(
        repeatable_read: str, make_worker: Any) -> None:
    results = [pgbg.run_in_background_with_limits(tasks.work, "a", 0, {"a": 1}, 0.02)
               for _ in range(6)]
    driver: Driver = make_worker(3)
    driver.until_done(*results, timeout=60)
    with psycopg.connect(repeatable_read) as conn:
        ids = [r.id for r in results]
        assert queries.task_summary(conn, ids) == {"a": {"succeeded": 6}}
        assert queries.task_max_overlap(conn, ids)["a"] <= 1


@pytest.mark.parametrize("level", [psycopg.IsolationLevel.REPEATABLE_READ,
                                   psycopg.IsolationLevel.SERIALIZABLE])
def test_enqueue_in_a_caller_transaction_at_any_level(
        database_url: str, level: psycopg.IsolationLevel) -> None:
    with psycopg.connect(database_url) as caller:
        caller.isolation_level = level
        result = pgbg.enqueue(tasks.add, args=(1, 2), task_type="t", connection=caller)
        many = pgbg.enqueue_many(tasks.add, [(1, 1), (2, 2)], task_type="t",
                                 connection=caller)
        assert caller.execute("SHOW transaction_isolation").fetchone() == (level.name.replace(
            "_", " ").lower(),)
        caller.commit()
    ids = [result.id, *(r.id for r in many)]
    assert all(pgbg.get_task(i).status is pgbg.TaskStatus.QUEUED for i in ids)


def test_terminate_and_retry_under_repeatable_read(repeatable_read: str, make_worker: Any,
                                                    tmp_path: Any) -> None:
    blocked = pgbg.run_in_background(tasks.block_until, "t", str(tmp_path / "never"))
    retried = pgbg.enqueue(tasks.fail_until_attempt, args=(2,), task_type="t",
                           max_attempts=2)
    driver: Driver = make_worker(2, retry_backoff=0.1)
    driver.until(lambda: pgbg.get_task(blocked).pid)
    pgbg.terminate_background(blocked, wait=False)
    driver.until_done(blocked, retried, timeout=60)
    assert pgbg.get_task(blocked).status is pgbg.TaskStatus.TERMINATED
    assert (pgbg.get_task(retried).status, pgbg.get_task(retried).attempt) == (
        pgbg.TaskStatus.SUCCEEDED, 2)


def test_a_worker_told_not_to_listen_prepares_nothing(
        make_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """``Worker(listen=False)`` from the library, the process otherwise listening: its own
    connection must still be fit for a transaction-pooling PgBouncer."""
    monkeypatch.delenv("PGBG_NO_LISTEN", raising=False)
    monkeypatch.delenv("PGBG_PREPARE", raising=False)
    driver = make_worker(1, listen=False)
    driver.worker.start()
    assert driver.worker._db.conn.prepare_threshold is None
