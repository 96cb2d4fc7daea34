"""Django tasks for tests/django/test_review_15.py."""

from __future__ import annotations

import os
import signal
from typing import Any

from django.tasks import TaskContext, task


@task(takes_context=True, max_attempts=2)
def fails_once(context: TaskContext) -> dict[str, Any]:
    """Fails on its first attempt; on the second, says what it saw."""
    if context.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": context.attempt, "attempts": context.task_result.attempts}


@task
def kills_itself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task
def exits(code: int) -> None:
    os._exit(code)


@task
def returns(value: Any) -> Any:
    return value
