"""Plain data: task states and the rows pgbg hands back to callers."""

from __future__ import annotations

import dataclasses
import enum
import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, tzinfo
from typing import Any


class TaskStatus(enum.StrEnum):
    """The life of a task. The database enum ``pgbg.task_status`` has the same values."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TERMINATED = "terminated"

    @property
    def is_terminal(self) -> bool:
        return self not in (TaskStatus.QUEUED, TaskStatus.RUNNING)


TERMINAL_STATUSES = tuple(s for s in TaskStatus if s.is_terminal)


@dataclass(frozen=True)
class BackgroundTask:
    """One row of ``pgbg.task``; attribute names are the column names."""

    id: uuid.UUID
    task_type: str
    func: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    status: TaskStatus
    num_proc: int
    num_of_task_type: dict[str, int]
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: uuid.UUID | None = None
    hostname: str | None = None
    pid: int | None = None
    attempt: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    info: str | None = None
    error: str | None = None
    result: Any = None
    cancel_requested_at: datetime | None = None
    cancel_requested_by: str | None = None
    run_at: datetime | None = None
    unique_key: str | None = None
    unique_running: bool = True
    retry_on: list[str] | None = None
    retry_backoff: float | None = None
    periodic: str | None = None  # the periodic task that queued it
    period: datetime | None = None  # ... for this period
    complete: bool = False
    completed_successfully: bool = False

    def to_wire(self) -> dict[str, Any]:
        """As plain JSON values (to hand to the fork server)."""
        return {f.name: _wire(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BackgroundTask:
        """From a database row; columns this version does not know (added by a newer
        pgbg's migration, during a rolling upgrade) are ignored."""
        known = _field_names()
        values = {name: value for name, value in row.items() if name in known}
        return cls(**{**values, "status": TaskStatus(values["status"])})

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> BackgroundTask:
        """From ``to_wire``'s JSON values (or a row as JSON); unknown fields are ignored."""
        task, problem = cls.from_wire_lenient(data)
        if problem is not None:
            raise ValueError(problem)
        return task

    @classmethod
    def from_wire_lenient(cls, data: Mapping[str, Any]) -> tuple[BackgroundTask, str | None]:
        """``from_wire``, and a time Python cannot read (``-infinity``, a year BC, put
        there by SQL) left None and named in the second value instead of raising: the
        worker fails that task alone rather than every claim that returns it."""
        known = _field_names()
        values = {name: value for name, value in data.items() if name in known}
        problem = None
        for name in ("id", "worker_id"):
            values[name] = uuid.UUID(values[name]) if values[name] else None
        for name in TIME_FIELDS:
            try:
                values[name] = datetime.fromisoformat(values[name]) if values[name] else None
            except (TypeError, ValueError):
                problem = f"{name} {values[name]!r} cannot be read"
                values[name] = None
        for name in ("timeout", "retry_backoff"):  # JSON writes 600.0 as 600
            if isinstance(values.get(name), int):
                values[name] = float(values[name])
        values["status"] = TaskStatus(values["status"])
        return cls(**values), problem

    def in_zone(self, zone: tzinfo) -> BackgroundTask:
        """The same row with its times in ``zone`` (the session's, as psycopg gives them)."""
        times: dict[str, Any] = {name: value.astimezone(zone) for name in TIME_FIELDS
                                 if isinstance(value := getattr(self, name), datetime)}
        return dataclasses.replace(self, **times)

    # Names the original module used, so code written against it keeps working.
    @property
    def uuid(self) -> str:
        return str(self.id)

    @property
    def proc_id(self) -> int | None:
        return self.pid


TIME_FIELDS = ("queued_at", "started_at", "finished_at", "cancel_requested_at", "run_at",
               "period")


@functools.cache
def session_zone(name: str) -> tzinfo:
    """The zone of a session's ``TimeZone`` setting, as psycopg reads it: UTC when Python
    does not know it. (zoneinfo is imported here: the fork server, which loads this
    module, must not pay for it, nor for the threading its import may load.)"""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        return UTC


@functools.cache
def _field_names() -> frozenset[str]:
    return frozenset(f.name for f in fields(BackgroundTask))


def _wire(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True)
class QueuedTask:
    """A task still waiting, as ``get_queued_tasks`` reports it."""

    task_id: str
    task_type: str
    queue_position: int  # 1-based, in the order workers consider the queue
    priority: int
    queued_at: datetime
    waiting_for: list[str] = field(default_factory=list)
    run_at: datetime | None = None  # not claimed before this time

    @property
    def reason(self) -> str:
        """Why it still waits: the limits that block it, else a free worker slot."""
        return "; ".join(self.waiting_for) or "a free worker slot"
