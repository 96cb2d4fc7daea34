"""The HTTP API: queue a report in the request's transaction, await it, stop it.

    POST   /reports               {"title": ..., "pages": 3}  -> 201 {"id", "task_id"}
    GET    /reports/{id}?timeout=5  -> 200 the report once built; 202 while it is not
    GET    /tasks/{task_id}         -> the task's row, as pgbg records it
    DELETE /tasks/{task_id}         -> terminate it, wherever its worker runs
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

import pgbg
from pgbg import aio
from reports import database, tasks
from reports.database import Report


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with database.engine().begin() as conn:
        await conn.run_sync(database.Base.metadata.create_all)
    yield
    await aio.close()  # pgbg's own connection for this loop
    await database.engine().dispose()


app = FastAPI(title="reports", lifespan=lifespan)
Session = Annotated[AsyncSession, Depends(database.session)]


class NewReport(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    pages: int = Field(default=3, ge=1, le=1000)
    fail_after_queueing: bool = False  # to show the rollback: the task goes with the row


@app.post("/reports", status_code=201)
async def create_report(new: NewReport, session: Session) -> dict[str, Any]:
    """The report's row and its task commit together, or neither does."""
    async with session.begin():
        report = Report(title=new.title)
        session.add(report)
        await session.flush()  # its id, for the task
        queued = await tasks.build_report.using(connection=session).aenqueue(
            report.id, pages=new.pages)
        report.task_id = str(queued.id)
        if new.fail_after_queueing:
            raise HTTPException(500, "failed after queueing: nothing was kept")
    return {"id": report.id, "task_id": str(queued.id)}


@app.get("/reports/{report_id}")
async def get_report(report_id: int, session: Session,
                     timeout: Annotated[float, Query(ge=0, le=60)] = 5.0) -> Any:
    """Await the report's task for up to ``timeout`` seconds, without blocking the loop."""
    report = await session.get(Report, report_id)
    if report is None or report.task_id is None:
        raise HTTPException(404, f"no report {report_id}")
    try:
        task = await aio.wait_task(report.task_id, timeout=timeout)
    except TimeoutError:
        from fastapi.responses import JSONResponse

        current = await aio.get_task(report.task_id)
        return JSONResponse({"id": report_id, "status": current.status.value,
                             "info": current.info}, status_code=202)
    await session.refresh(report)
    return {"id": report_id, "status": task.status.value, "result": task.result,
            "error": task.error, "body": report.body}


def _task_id(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise HTTPException(422, f"{task_id!r} is not a task id") from None


@app.get("/tasks/{task_id}")
async def get_task(task_id: str) -> dict[str, Any]:
    try:
        task = await aio.get_task(_task_id(task_id))
    except pgbg.TaskNotFound:
        raise HTTPException(404, f"no task {task_id}") from None
    return {"id": str(task.id), "status": task.status.value, "task_type": task.task_type,
            "info": task.info, "pid": task.pid, "error": task.error}


@app.delete("/tasks/{task_id}")
async def terminate_task(task_id: str,
                         timeout: Annotated[float, Query(ge=0, le=60)] = 30.0
                         ) -> dict[str, Any]:
    try:
        task = await aio.terminate_background(_task_id(task_id), timeout=timeout)
    except pgbg.TaskNotFound:
        raise HTTPException(404, f"no task {task_id}") from None
    except TimeoutError:
        raise HTTPException(504, "the task did not stop in time") from None
    return {"id": str(task.id), "status": task.status.value}
