"""A task cannot harm pgbg's own machinery: its signals, its report pipe, its fork server."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Driver

import pgbg


def _run(driver: Driver, func: str, *args: object) -> pgbg.BackgroundTask:
    result = pgbg.run_in_background(func, "t", *args)
    driver.until_done(result)
    return pgbg.get_task(result)


def test_a_write_to_a_closed_pipe_raises_broken_pipe(make_worker: Callable[..., Driver]) -> None:
    task = _run(make_worker(1), "pgbg_test_hostile:write_to_closed_pipe")
    assert (task.status, task.result) == (pgbg.TaskStatus.SUCCEEDED, "BrokenPipeError")
    assert task.signal is None
