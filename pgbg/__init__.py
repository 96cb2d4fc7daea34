"""pgbg: PostgreSQL-backed background tasks.

Queue a function, see it as a row, limit how many run at once, wait for it, kill it.
"""

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
    DatabaseUnavailable,
    EmbeddedServerError,
    InvalidOption,
    InvalidTaskFunction,
    InvalidTaskId,
    InvalidTaskState,
    NotSerializable,
    PgbgError,
    SchemaMissing,
    TaskAlreadyStarted,
    TaskFailed,
    TaskNotFound,
)
from pgbg.models import BackgroundTask, QueuedTask, TaskStatus
from pgbg.worker import Worker

__all__ = [
    "BackgroundTask",
    "ConfigurationError",
    "DatabaseUnavailable",
    "EmbeddedServerError",
    "InvalidOption",
    "InvalidTaskFunction",
    "InvalidTaskId",
    "InvalidTaskState",
    "NotSerializable",
    "PgbgError",
    "QueuedTask",
    "Result",
    "SchemaMissing",
    "TaskAlreadyStarted",
    "TaskFailed",
    "TaskNotFound",
    "TaskStatus",
    "Worker",
    "configure",
    "doctor",
    "enqueue",
    "get_current_task",
    "get_or_generate_task_uuid",
    "get_queued_tasks",
    "get_task",
    "get_task_links",
    "get_task_log",
    "list_tasks",
    "list_workers",
    "purge_tasks",
    "record_task_error_exit",
    "record_task_info",
    "record_task_related",
    "remove_task_from_queue",
    "retry_task",
    "run_in_background",
    "run_in_background_with_limits",
    "task_stats",
    "terminate_background",
    "wait_task",
]
