"""Tasks declared with ``@pgbg.task``. Workers import this module by name (``--import``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pgbg


@pgbg.task(task_type="import", num_of_task_type={"import": 1}, priority=5, max_attempts=3,
           retry_on=[ValueError], retry_backoff=0.25, timeout=600)
def import_study(path: str, *, fail: bool = False) -> str:
    if fail:
        raise ValueError(f"cannot read {path}")
    return f"imported {path}"


@pgbg.task
def double(x: int) -> int:
    return x * 2


@pgbg.task(task_type="async-declared")
async def async_double(x: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"value": x * 2, "pid": os.getpid()}


@pgbg.task(task_type="kw")
def takes_options(priority: int, task_type: str, connection: str = "none") -> list[Any]:
    """Its own arguments share names with enqueue's options: they never collide."""
    return [priority, task_type, connection]


def undeclared(x: int) -> int:
    return x
