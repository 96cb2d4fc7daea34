"""Tasks the Django tests queue."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.db import connection
from django.tasks import TaskContext, task

from studies.models import Study


class ImportFailed(Exception):
    pass


@task
def add(a: int, b: int) -> int:
    return a + b


@task(priority=10, task_type="test.fails")
def fails(message: str) -> None:
    raise ImportFailed(message)


@task(takes_context=True)
def with_context(context: TaskContext, tag: str) -> dict[str, Any]:
    return {"attempt": context.attempt, "id": context.task_result.id, "tag": tag,
            "status": str(context.task_result.status)}


@task
async def async_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@task
def orm_work(accession: str) -> dict[str, Any]:
    """Uses the ORM in the child: its own connection to the database."""
    study = Study.objects.create(accession=accession, series=1)
    connection.ensure_connection()
    return {"study": study.pk, "count": Study.objects.count(),
            "backend_pid": connection.connection.info.backend_pid, "pid": os.getpid()}


@task
def not_json() -> object:
    return object()
