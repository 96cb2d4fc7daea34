"""pgbg: PostgreSQL-backed background tasks.

Queue a function, see it as a row, limit how many run at once, wait for it, kill it.

Names load on first use, so ``import pgbg`` inside a task's process (which holds no
database connection) stays cheap: the driver is imported only by what needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgbg import aio
    from pgbg.admin import (
        doctor,
        get_task_links,
        get_task_log,
        list_tasks,
        list_workers,
        purge_tasks,
        retry_task,
        task_stats,
    )
    from pgbg.api import (
        Result,
        enqueue,
        enqueue_many,
        get_queued_tasks,
        get_task,
        remove_task_from_queue,
        run_in_background,
        run_in_background_with_limits,
        terminate_background,
        wait_task,
    )
    from pgbg.context import (
        get_current_task,
        get_or_generate_task_uuid,
        record_task_error_exit,
        record_task_info,
        record_task_related,
    )
    from pgbg.db import configure
    from pgbg.exceptions import (
        ConfigurationError,
        DatabaseError,
        DatabaseUnavailable,
        EmbeddedServerError,
        InvalidOption,
        InvalidTaskFunction,
        InvalidTaskId,
        InvalidTaskState,
        NotSerializable,
        PeriodicNotFound,
        PgbgError,
        SchemaMissing,
        TaskAlreadyStarted,
        TaskFailed,
        TaskNotFound,
    )
    from pgbg.models import BackgroundTask, QueuedTask, TaskStatus
    from pgbg.periodic import (
        PeriodicTask,
        add_periodic,
        get_periodic,
        list_periodic,
        remove_periodic,
    )
    from pgbg.registry import Task, task
    from pgbg.worker import Worker

_WHERE = {
    'BackgroundTask': 'pgbg.models',
    'ConfigurationError': 'pgbg.exceptions',
    'DatabaseError': 'pgbg.exceptions',
    'DatabaseUnavailable': 'pgbg.exceptions',
    'EmbeddedServerError': 'pgbg.exceptions',
    'InvalidOption': 'pgbg.exceptions',
    'InvalidTaskFunction': 'pgbg.exceptions',
    'InvalidTaskId': 'pgbg.exceptions',
    'InvalidTaskState': 'pgbg.exceptions',
    'NotSerializable': 'pgbg.exceptions',
    'PeriodicNotFound': 'pgbg.exceptions',
    'PeriodicTask': 'pgbg.periodic',
    'PgbgError': 'pgbg.exceptions',
    'QueuedTask': 'pgbg.models',
    'Result': 'pgbg.api',
    'SchemaMissing': 'pgbg.exceptions',
    'TaskAlreadyStarted': 'pgbg.exceptions',
    'TaskFailed': 'pgbg.exceptions',
    'TaskNotFound': 'pgbg.exceptions',
    'Task': 'pgbg.registry',
    'TaskStatus': 'pgbg.models',
    'Worker': 'pgbg.worker',
    'add_periodic': 'pgbg.periodic',
    'configure': 'pgbg.db',
    'doctor': 'pgbg.admin',
    'enqueue': 'pgbg.api',
    'enqueue_many': 'pgbg.api',
    'get_current_task': 'pgbg.context',
    'get_or_generate_task_uuid': 'pgbg.context',
    'get_periodic': 'pgbg.periodic',
    'get_queued_tasks': 'pgbg.api',
    'get_task': 'pgbg.api',
    'get_task_links': 'pgbg.admin',
    'get_task_log': 'pgbg.admin',
    'list_periodic': 'pgbg.periodic',
    'list_tasks': 'pgbg.admin',
    'list_workers': 'pgbg.admin',
    'purge_tasks': 'pgbg.admin',
    'record_task_error_exit': 'pgbg.context',
    'record_task_info': 'pgbg.context',
    'record_task_related': 'pgbg.context',
    'remove_periodic': 'pgbg.periodic',
    'remove_task_from_queue': 'pgbg.api',
    'retry_task': 'pgbg.admin',
    'run_in_background': 'pgbg.api',
    'run_in_background_with_limits': 'pgbg.api',
    'task': 'pgbg.registry',
    'task_stats': 'pgbg.admin',
    'terminate_background': 'pgbg.api',
    'wait_task': 'pgbg.api',
}


def __getattr__(name: str) -> Any:
    if name == "aio":  # the asyncio API, a module of its own
        return importlib.import_module("pgbg.aio")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pgbg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BackgroundTask",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "EmbeddedServerError",
    "InvalidOption",
    "InvalidTaskFunction",
    "InvalidTaskId",
    "InvalidTaskState",
    "NotSerializable",
    "PeriodicNotFound",
    "PeriodicTask",
    "PgbgError",
    "QueuedTask",
    "Result",
    "SchemaMissing",
    "Task",
    "TaskAlreadyStarted",
    "TaskFailed",
    "TaskNotFound",
    "TaskStatus",
    "Worker",
    "add_periodic",
    "aio",
    "configure",
    "doctor",
    "enqueue",
    "enqueue_many",
    "get_current_task",
    "get_or_generate_task_uuid",
    "get_periodic",
    "get_queued_tasks",
    "get_task",
    "get_task_links",
    "get_task_log",
    "list_periodic",
    "list_tasks",
    "list_workers",
    "purge_tasks",
    "record_task_error_exit",
    "record_task_info",
    "record_task_related",
    "remove_periodic",
    "remove_task_from_queue",
    "retry_task",
    "run_in_background",
    "run_in_background_with_limits",
    "task",
    "task_stats",
    "terminate_background",
    "wait_task",
]
