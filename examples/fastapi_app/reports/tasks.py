"""The background work, declared once. A worker runs it with
``pgbg worker --registered-only --import reports.tasks``."""

from __future__ import annotations

import asyncio

import psycopg

import pgbg


@pgbg.task(task_type="report", num_of_task_type={"report": 2}, max_attempts=3,
           retry_on=[psycopg.OperationalError], timeout=300)
async def build_report(report_id: int, pages: int = 3) -> dict[str, int | str]:
    """Build the report's body, page by page, and store it on the application's row.
    An ``async def`` task: it runs in its own process, on its own event loop."""
    body = []
    for page in range(1, pages + 1):
        await asyncio.sleep(0)  # real work would await I/O here
        body.append(f"page {page} of report {report_id}")
        pgbg.record_task_info(f"page {page}/{pages}")
    async with await psycopg.AsyncConnection.connect(pgbg.db.database_url()) as conn:
        await conn.execute("UPDATE report SET body = %s WHERE id = %s",
                           ("\n".join(body), report_id))
    pgbg.record_task_related("report", report_id)
    return {"report_id": report_id, "pages": pages}


@pgbg.task(task_type="report")
async def wait_forever(marker: str) -> None:
    """A task that never ends by itself (the example's terminate route stops it)."""
    pgbg.record_task_info(f"waiting: {marker}")
    await asyncio.Event().wait()
