"""Django tasks for tests/django/test_review_15.py."""

from __future__ import annotations

import os
import signal
from typing import Any

from django.tasks import TaskContext, task
from django.tasks.signals import task_finished


def _record_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """In the worker's child: what Django's task_finished signal said, for the test."""
    path = os.environ.get("REVIEW15_SIGNALS")
    if path:
        with open(path, "a") as out:
            out.write(f"{task_result.id} {task_result.status}\n")


task_finished.connect(_record_finished)


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


@task
def returns_unstorable(kind: str) -> Any:
    """A value JSON can hold but PostgreSQL's jsonb cannot (built here, as arguments are
    refused at enqueue)."""
    return {"nul": "a" + chr(0) + "b", "negzero": -0.0, "surrogate": "x" + chr(0xD800)}[kind]
