"""The current task, inside the child process that runs it.

The child holds no database connection: what a task records (progress, failure, links)
travels as one JSON line on the pipe to the worker, which writes it, fenced like every
other write of that attempt. Outside a task every function here is a harmless no-op (or
returns None), as in the original module, so library code can call them anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from typing import Any

from pgbg.models import BackgroundTask

_wire: dict[str, Any] | None = None  # the task as the child received it (JSON values)
_current: BackgroundTask | None = None  # ... made a BackgroundTask when first asked for
_inside = False  # in a task that has not recorded its own failure
_report_fd = -1
# The worker's database URL, password included: set in the fork server before it forks
# (``child.setup``), so a task can use pgbg without the URL being in its environment.
database_url: str | None = None


def enter(task: dict[str, Any], report_fd: int) -> None:
    """Called once by the child before it runs the task's function."""
    global _wire, _inside, _report_fd
    _wire, _inside, _report_fd = task, True, report_fd


def _task() -> BackgroundTask | None:
    global _current
    if _current is None and _inside and _wire is not None:
        _current = BackgroundTask.from_wire({**_wire, "pid": os.getpid()})
    return _current if _inside else None


def report(message: dict[str, Any]) -> None:
    """Send one message to the worker (blocking until the pipe takes it)."""
    data = memoryview(json.dumps(message, allow_nan=False).encode() + b"\n")
    while data:
        data = data[os.write(_report_fd, data):]


def get_current_task() -> BackgroundTask | None:
    """Inside a task: its row (with this process's pid); else None, and None again after
    ``record_task_error_exit``."""
    return _task()


def get_or_generate_task_uuid() -> str:
    """The current task's id inside a task, else a fresh uuid4 (as a string)."""
    return str(_wire["id"]) if _inside and _wire else str(uuid.uuid4())


def record_task_info(message: str) -> None:
    """Inside a task: record progress (``info`` on the row, and a line in ``task_log``)."""
    global _current
    task = _task()
    if task is None:
        return
    report({"kind": "info", "message": str(message)})
    _current = dataclasses.replace(task, info=str(message))


def record_task_error_exit(message: str) -> None:
    """Inside a task: record failure and mark the task complete and unsuccessful.

    What the function does afterwards does not change that outcome.
    """
    global _inside
    if not _inside:
        return
    report({"kind": "error_exit", "message": str(message)})
    _inside = False


def record_task_related(kind: str, key: object) -> None:
    """Inside a task: link it to an application object, e.g. ``("study", 1234)``."""
    if not _inside:
        return
    report({"kind": "related", "link_kind": str(kind), "key": str(key)})
