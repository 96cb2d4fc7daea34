"""Task modules for review 14's tests (imported by workers by name)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pgbg


def _block(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.05)


async def leaves_executor_thread(release: str) -> str:
    """Starts a blocking call in the default executor, returns without awaiting it."""
    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, _block, release)
    return "returned"


async def leaves_stubborn_task(release: str) -> str:
    """Leaves a task that ignores cancellation until ``release`` exists."""
    async def stubborn() -> None:
        while not Path(release).exists():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass
    asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    return "returned"


@pgbg.task(task_type="review")
def declared_echo(x: int) -> int:
    return x


async def chain_with_aio(a: int, b: int) -> int:
    """An async task queuing and awaiting another through pgbg.aio."""
    import pgbg_test_tasks

    from pgbg import aio

    queued = await aio.run_in_background(pgbg_test_tasks.add, "t", a, b)
    return (await aio.wait_task(queued, timeout=60)).result


async def raises_keyboard_interrupt() -> None:
    await asyncio.sleep(0)
    raise KeyboardInterrupt


async def exits_3() -> None:
    await asyncio.sleep(0)
    raise SystemExit(3)


async def nested_run() -> None:
    async def inner() -> int:
        return 1
    asyncio.run(inner())


async def error_exit_then_raise() -> None:
    pgbg.record_task_error_exit("gave up")
    raise ValueError("after error exit")
