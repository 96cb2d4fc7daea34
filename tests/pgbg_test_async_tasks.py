"""``async def`` task functions the tests queue. Workers import this module by name."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pgbg


async def add_and_describe(a: int, b: int) -> dict[str, Any]:
    """Awaits, records progress and a link, and says where it ran."""
    await asyncio.sleep(0)
    pgbg.record_task_info(f"adding {a} and {b}")
    pgbg.record_task_related("sum", a + b)
    task = pgbg.get_current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    return {"sum": a + b, "task_id": str(task.id), "task_pid": task.pid, "pid": os.getpid(),
            "info": task.info, "loop": type(loop).__module__}


async def fail(message: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


async def error_exit(message: str) -> str:
    await asyncio.sleep(0)
    pgbg.record_task_error_exit(message)
    return "returned after recording failure"


async def spawn_and_block(pidfile: str) -> None:
    """Start a grandchild with asyncio's subprocess support, write both pids, then await
    forever (until terminated)."""
    grandchild = await asyncio.create_subprocess_exec("sleep", "1000")
    Path(pidfile + ".tmp").write_text(f"{os.getpid()} {grandchild.pid}")
    os.rename(pidfile + ".tmp", pidfile)
    await asyncio.Event().wait()


def returns_coroutine(a: int, b: int) -> Any:
    """A plain function returning a coroutine (a wrapped async function): awaited too."""
    return add_and_describe(a, b)


async def returns_unstorable() -> object:
    await asyncio.sleep(0)
    return {1, 2}
