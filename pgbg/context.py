"""The current task, inside the child process that runs it.

Outside a task every function here is a harmless no-op (or returns None), as in the
original module, so library code can call them whether or not it runs in the background.
"""

from __future__ import annotations

import dataclasses
import uuid

from pgbg import db, queries
from pgbg.models import BackgroundTask, TaskStatus

_current: BackgroundTask | None = None
_error_exit_recorded = False


def enter(task: BackgroundTask) -> None:
    """Called once by the child before it runs the task's function."""
    global _current, _error_exit_recorded
    _current, _error_exit_recorded = task, False


def error_exit_recorded() -> bool:
    return _error_exit_recorded


def get_current_task() -> BackgroundTask | None:
    """Inside a task: its row (with this process's pid); else None, and None again after
    ``record_task_error_exit``."""
    return _current


def get_or_generate_task_uuid() -> str:
    """The current task's id inside a task, else a fresh uuid4 (as a string)."""
    return str(_current.id) if _current else str(uuid.uuid4())


def record_task_info(message: str) -> None:
    """Inside a task: record progress (``info`` on the row, and a line in ``task_log``)."""
    global _current
    if _current is None:
        return
    with db.shared_connection() as conn:
        queries.task_record_info(conn, _current, str(message))
    _current = dataclasses.replace(_current, info=str(message))


def record_task_error_exit(message: str) -> None:
    """Inside a task: record failure and mark the task complete and unsuccessful.

    What the function does afterwards does not change that outcome.
    """
    global _current, _error_exit_recorded
    if _current is None:
        return
    with db.shared_connection() as conn:
        queries.task_record_error_exit(conn, _current, str(message))
    _current = dataclasses.replace(_current, status=TaskStatus.FAILED, error=str(message))
    _current, _error_exit_recorded = None, True


def record_task_related(kind: str, key: object) -> None:
    """Inside a task: link it to an application object, e.g. ``("study", 1234)``."""
    if _current is None:
        return
    with db.shared_connection() as conn:
        queries.task_link_insert(conn, _current.id, str(kind), str(key))
