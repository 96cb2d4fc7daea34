"""The FastAPI example (examples/fastapi_app), end to end: a request queues an ``async
def`` task in its own AsyncSession transaction, another awaits it, another kills it; a
real worker runs only the declared tasks."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import WorkerProcess, alive, count_tasks, wait_for

import pgbg

EXAMPLE = Path(__file__).parents[2] / "examples" / "fastapi_app"


@pytest.fixture
def example(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("REPORTS_DATABASE_URL", database_url)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(EXAMPLE), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for module in [m for m in sys.modules if m == "reports" or m.startswith("reports.")]:
        del sys.modules[module]
    from reports import app, database

    database.engine.cache_clear()
    yield app.app
    database.engine.cache_clear()



async def _session(app: Any, scenario: Callable[[httpx.AsyncClient], Any]) -> Any:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reports") as client:
            return await scenario(client)


@pytest.mark.slow
def test_the_fastapi_example_end_to_end(example: Any, conn: psycopg.Connection[Any],
                                        worker_process: Callable[..., WorkerProcess]) -> None:
    async def queue(client: httpx.AsyncClient) -> dict[str, Any]:
        bad = await client.post("/reports", json={"title": ""})
        assert bad.status_code == 422
        failed = await client.post("/reports", json={"title": "lost",
                                                     "fail_after_queueing": True})
        assert failed.status_code == 500
        created = await client.post("/reports", json={"title": "Q3", "pages": 2})
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        waiting = await client.get(f"/reports/{body['id']}", params={"timeout": 0})
        assert waiting.status_code == 202 and waiting.json()["status"] == "queued"
        return body

    created = asyncio.run(_session(example, queue))
    # the failed request kept neither its report nor its task
    assert count_tasks(conn) == 1
    assert conn.execute("SELECT title FROM report").fetchall() == [("Q3",)]
    task = pgbg.get_task(created["task_id"])
    assert (task.func, task.task_type, task.num_of_task_type, task.max_attempts) == (
        "reports.tasks:build_report", "report", {"report": 2}, 3)

    worker_process(2, "--registered-only", "--import", "reports.tasks")

    async def await_it(client: httpx.AsyncClient) -> Any:
        done = await client.get(f"/reports/{created['id']}", params={"timeout": 60})
        assert done.status_code == 200, done.text
        missing = await client.get("/reports/999")
        not_an_id = await client.get("/tasks/not-an-id")
        unknown = await client.get(f"/tasks/{uuid.uuid4()}")
        assert (missing.status_code, not_an_id.status_code, unknown.status_code) == (
            404, 422, 404)
        return done.json()

    report = asyncio.run(_session(example, await_it))
    assert report["status"] == "succeeded", report
    assert report["result"] == {"report_id": created["id"], "pages": 2}
    assert report["body"] == f"page 1 of report {created['id']}\npage 2 of report {created['id']}"
    assert pgbg.get_task_links(created["task_id"]) == [("report", str(created["id"]))]

    from reports import tasks

    forever = tasks.wait_forever.enqueue("stop me")
    wait_for(lambda: pgbg.get_task(forever).pid is not None, timeout=60,
             message="the endless task to start")
    pid = pgbg.get_task(forever).pid
    assert pid is not None

    async def terminate(client: httpx.AsyncClient) -> Any:
        running = await client.get(f"/tasks/{forever.id}")
        assert running.json()["status"] == "running"
        stopped = await client.delete(f"/tasks/{forever.id}", params={"timeout": 60})
        assert stopped.status_code == 200, stopped.text
        return stopped.json()

    assert asyncio.run(_session(example, terminate))["status"] == "terminated"
    wait_for(lambda: not alive(pid), timeout=10, message="the task's process to be gone")
