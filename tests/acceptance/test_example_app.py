"""The embedding example (examples/shop): an application with its own models and Alembic
history uses pgbg side by side, enqueues in its own transactions, reports with joins."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from conftest import WorkerProcess, with_database

import pgbg
from pgbg import migrate

SHOP = Path(__file__).parents[2] / "examples" / "shop"


@pytest.fixture
def shop_url(server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty database for the shop, as its own deployment would have."""
    name = f"shop_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    monkeypatch.setenv("SHOP_DATABASE_URL", url.replace("postgresql://", "postgresql+psycopg://"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(SHOP), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(SHOP))
    for module in [m for m in sys.modules if m == "shop" or m.startswith("shop.")]:
        del sys.modules[module]
    yield url
    database = importlib.import_module("shop.database")
    database.engine().dispose()
    pgbg.configure()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(*command: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *command], cwd=SHOP, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_the_shop_example_end_to_end(shop_url: str) -> None:
    # Deploy twice: both histories upgrade side by side, the second time is a no-op.
    for _ in range(2):
        run("-m", "shop.deploy")
    with psycopg.connect(shop_url) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            ("shop_0001",)]
        assert conn.execute("SELECT version_num FROM pgbg.alembic_version").fetchall() == [
            (migrate.head_revision(),)]
    # The shop's autogenerate sees no difference: it would never touch pgbg's tables.
    check = run("-m", "alembic", "-c", "alembic.ini", "check")
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    database = importlib.import_module("shop.database")
    service = importlib.import_module("shop.service")

    # The order and its task commit together, or neither exists.
    with database.session() as session:
        service.place_order(session, "rolled back", Decimal("1.00"))
        session.rollback()
    with psycopg.connect(shop_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pgbg.task").fetchone() == (0,)

    invoices = []
    with database.session() as session, session.begin():
        for customer, total in [("ada", "12.50"), ("grace", "99.00"), ("alan", "3.14")]:
            _order, invoice = service.place_order(session, customer, Decimal(total))
            invoices.append(invoice)
    assert [i.status for i in invoices] == [pgbg.TaskStatus.QUEUED] * 3

    worker = WorkerProcess(shop_url, 2)  # a real `pgbg worker`, the shop importable
    try:
        results = [invoice.get(timeout=120) for invoice in invoices]
    finally:
        worker.stop()
    assert results == ["INV-000002", "INV-000003", "INV-000004"]  # order 1 was rolled back

    with database.session() as session:
        report = service.order_report(session)
    assert [(r.customer, r.invoice_number, r.task_status, r.attempts) for r in report] == [
        ("ada", "INV-000002", "succeeded", 1), ("grace", "INV-000003", "succeeded", 1),
        ("alan", "INV-000004", "succeeded", 1)]
    assert pgbg.get_task_links(invoices[0]) == [("order", "2")]
    assert any("invoice INV-000002 for ada" in line.message
               for line in pgbg.get_task_log(invoices[0]))


