"""pgbg as a ``django.tasks`` backend: ``TASKS = {"default": {"BACKEND":
"pgbg.contrib.django.PgbgBackend"}}``.

A Django task is queued as a pgbg task whose function is the ``Task`` object itself
(``myapp.tasks:import_study``): the worker's child imports it and calls it, which runs the
function (``async def`` ones too) with Django's ``TaskContext`` when it asks for one. So
the row shows the task's own name, arguments and result, in SQL and in the admin.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.core import checks
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

import pgbg
from pgbg import api, registry, storable
from pgbg.exceptions import EnqueueFailed
from pgbg.models import BackgroundTask, TaskStatus

# pgbg's options a task (``@task(...)``, ``.using(...)``) may set; the backend's OPTIONS may
# give defaults for all but ``unique_key``.
TASK_OPTIONS = ("task_type", "num_proc", "num_of_task_type", "max_attempts", "timeout",
                "unique_key")
BACKEND_OPTIONS = ("database", *TASK_OPTIONS[:-1])

STATUS = {
    TaskStatus.QUEUED: TaskResultStatus.READY,
    TaskStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    TaskStatus.FAILED: TaskResultStatus.FAILED,
    TaskStatus.CANCELLED: TaskResultStatus.FAILED,
    TaskStatus.TERMINATED: TaskResultStatus.FAILED,
}


class InvalidTaskArguments(InvalidTask, TypeError):
    """A task's arguments must be JSON: pgbg stores them in jsonb and never pickles."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PgbgTask(Task):
    """A ``django.tasks`` Task with pgbg's options (Django passes ``@task(...)``'s extra
    keyword arguments to the backend's ``task_class``): ``None`` means the backend's
    OPTIONS, else pgbg's default."""

    task_type: str | None = None
    num_proc: int | None = None
    num_of_task_type: Mapping[str, int] | None = field(default=None, hash=False)
    max_attempts: int | None = None
    timeout: float | None = None
    unique_key: str | None = None

    def __post_init__(self) -> None:
        """Checked by the backend (Django's own), and declared to pgbg, so a worker with
        ``--registered-only --import`` of the task's module runs it."""
        Task.__post_init__(self)  # not super(): slots=True makes a new class
        registry.register(_func(self), self)

    def using(self, *, priority: int | None = None, queue_name: str | None = None,
              run_after: datetime | None = None, backend: str | None = None,
              **options: Any) -> PgbgTask:
        """``Task.using``, and pgbg's options too (``unique_key=`` per call, say)."""
        unknown = sorted(set(options) - set(TASK_OPTIONS))
        if unknown:
            raise InvalidTask(f"unknown pgbg task option {unknown[0]!r}; "
                              f"known: {', '.join(TASK_OPTIONS)}")
        task = Task.using(self, priority=priority, queue_name=queue_name, run_after=run_after,
                          backend=backend)
        return replace(task, **options) if options else task  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task, as the worker's child does: with its ``TaskContext`` if it takes
        one; the return value normalised to JSON as Django's backends do."""
        backend = self.get_backend()
        current = pgbg.get_current_task()
        result = backend.task_result(current) if current is not None else None
        if result is not None:
            task_started.send(type(backend), task_result=result)
        if self.takes_context:
            if result is None:
                raise InvalidTask("a task that takes context runs only in a pgbg worker")
            args = (TaskContext(task_result=result), *args)
        try:
            value = normalize_json(self.call(*args, **kwargs))
        except BaseException:
            if result is not None:  # inside except: the log handler sees the traceback
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
                task_finished.send(type(backend), task_result=result)
            raise
        if result is not None:
            if _storable(value):
                object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
                object.__setattr__(result, "_return_value", value)
            else:  # the worker's child records the task failed, saying why
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
            task_finished.send(type(backend), task_result=result)
        return value


class PgbgBackend(BaseTaskBackend):
    """Queues ``django.tasks`` tasks in pgbg, in the transaction of Django's connection."""

    task_class = PgbgTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        if not isinstance(self.options, Mapping):
            raise InvalidTaskBackend(f"TASKS[{alias!r}]['OPTIONS'] must be a dict")
        unknown = sorted(set(self.options) - set(BACKEND_OPTIONS))
        if unknown:
            raise InvalidTaskBackend(
                f"TASKS[{alias!r}]: unknown OPTIONS key {unknown[0]!r} for PgbgBackend; "
                f"known: {', '.join(BACKEND_OPTIONS)}")
        from pgbg.contrib.django import conf

        database = self.options.get("database")
        if database is not None:
            conf.check_alias(database, f"TASKS[{alias!r}]['OPTIONS']['database']")
        self.database: str = database or conf.database_alias()
        self.defaults = {name: self.options[name] for name in TASK_OPTIONS
                         if name in self.options}
        try:
            _pgbg_options(f"TASKS[{alias!r}]['OPTIONS']", "pgbg.contrib.django:check",
                          self.defaults)
        except InvalidTask as exc:
            raise InvalidTaskBackend(str(exc)) from None

    # -- declaring and queueing ---------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        _pgbg_options(task.module_path, _func(task), self.options_of(task))

    def options_of(self, task: Task) -> dict[str, Any]:
        """pgbg's options for ``task``: its own, else the backend's OPTIONS."""
        options = dict(self.defaults)
        for name in TASK_OPTIONS:
            value = getattr(task, name, None)
            if value is not None:
                options[name] = value
        options.setdefault("task_type", task.module_path)
        return options

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Queue ``task(*args, **kwargs)``: inside ``transaction.atomic()`` on the backend's
        database, in that transaction (it exists only if that commits), in a savepoint.
        With a ``unique_key`` a live task holds, that task's result (nothing is queued,
        no ``task_enqueued``)."""
        self.validate_task(task)
        args, kwargs = _json_arguments(task, args, kwargs)
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):
            run_at = timezone.make_aware(run_at)
        try:
            params = api.prepare_enqueue(_func(task), args, kwargs, priority=task.priority,
                                         run_at=run_at, **self.options_of(task))
        except pgbg.NotSerializable as exc:
            raise InvalidTaskArguments(f"{task.module_path}: {exc}") from None
        except pgbg.InvalidOption as exc:
            raise InvalidTask(f"{task.module_path}: {exc}") from None
        connection = self.connection()
        with self._scope(connection, EnqueueFailed):
            queued = api.run(api.enqueue_operation(params), connection,
                             refused=EnqueueFailed)
            if str(queued.id) != params["id"]:  # a live task holds the unique_key: that one
                return self.task_result(api.run(api.get_task_operation(queued.id),
                                                connection))
        result = TaskResult(task=task, id=str(queued.id), status=TaskResultStatus.READY,
                            enqueued_at=timezone.now(), started_at=None, finished_at=None,
                            last_attempted_at=None, args=args, kwargs=kwargs,
                            backend=self.alias, errors=[], worker_ids=[])
        task_enqueued.send(type(self), task_result=result)
        return result

    def connection(self) -> Any:
        """Django's connection to the backend's database while it is in a transaction
        (``atomic()``, or autocommit off), for pgbg to join; else None (pgbg commits on its
        own connection) — except for a backend whose ``OPTIONS["database"]`` is not
        ``PGBG_DATABASE``: pgbg's own connection is to that one, so always Django's."""
        from django.db import connections

        from pgbg.contrib.django import conf, transactions

        connection = connections[self.database]
        if self.database != conf.database_alias() or transactions.in_transaction(connection):
            return connection
        return None

    def _scope(self, connection: Any, refused: type[pgbg.DatabaseError] = pgbg.DatabaseError
               ) -> AbstractContextManager[Any]:
        """Around pgbg's statements on Django's ``connection``: a savepoint inside its
        transaction (a failed one leaves the caller's transaction usable), else a
        transaction of its own; a database error as pgbg's."""
        from pgbg.contrib.django import transactions

        if connection is None:
            return nullcontext()

        stack = ExitStack()
        stack.enter_context(api.database_errors(refused))
        stack.enter_context(transactions.scope(self.database))
        return stack

    # -- results ------------------------------------------------------------------------

    def get_result(self, result_id: Any) -> TaskResult:
        """The task's result as it is now, from any process."""
        try:
            tid = uuid.UUID(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(f"{result_id!r} is not a pgbg task id") from None
        connection = self.connection()
        try:
            with self._scope(connection):
                row = api.run(api.get_task_operation(tid), connection)
        except pgbg.TaskNotFound:
            raise TaskResultDoesNotExist(f"no task with id {tid}") from None
        return self.task_result(row)

    def task_result(self, row: BackgroundTask) -> TaskResult:
        """A pgbg task's row as Django's ``TaskResult``."""
        task = _declared_task(row)
        changes: dict[str, Any] = {}
        if task.priority != row.priority:
            changes["priority"] = row.priority
        if task.run_after != row.run_at:
            changes["run_after"] = row.run_at
        if task.backend != self.alias:
            changes["backend"] = self.alias
        if changes:  # as the row says, unchecked: pgbg's own API may queue a priority
            task = copy.copy(task)  # wider than Django's -100...100 for the same function
            for name, value in changes.items():
                object.__setattr__(task, name, value)
        status = STATUS[row.status]
        errors = []
        if status is TaskResultStatus.FAILED:
            errors.append(TaskError(exception_class_path=exception_class_path(row),
                                    traceback=row.error or f"the task was {row.status}"))
        result = TaskResult(
            task=task, id=str(row.id), status=status, enqueued_at=row.queued_at,
            started_at=row.started_at, finished_at=row.finished_at,
            last_attempted_at=row.started_at, args=row.args, kwargs=row.kwargs,
            backend=self.alias, errors=errors,
            # pgbg keeps the worker of the latest attempt only: one entry per attempt, so
            # ``attempts`` (and ``TaskContext.attempt``) is the attempt number
            worker_ids=[str(row.worker_id)] * row.attempt if row.worker_id else [])
        if status is TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", row.result)
        return result

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        from django.apps import apps

        if not apps.is_installed("pgbg.contrib.django"):
            return [checks.Error("PgbgBackend needs the app pgbg.contrib.django",
                                 hint="Add 'pgbg.contrib.django' to INSTALLED_APPS.",
                                 obj=self.alias, id="pgbg.E001")]
        return []


def _func(task: Task) -> str:
    """pgbg's name for the task: ``module:qualname`` of the Task object itself."""
    return f"{task.func.__module__}:{task.func.__qualname__}"


def _declared_task(row: BackgroundTask) -> Task:
    module, _, qualname = row.func.partition(":")
    try:
        task = import_string(f"{module}.{qualname}")
    except ImportError as exc:
        raise TaskResultDoesNotExist(f"task {row.id}: cannot import {row.func}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskResultDoesNotExist(f"task {row.id} ({row.func}) was not queued through "
                                     "django.tasks; read it with pgbg.get_task")
    return task


def _storable(value: Any) -> bool:
    """Whether the worker's child can store ``value`` as the task's result (the child's
    own rule: ``storable.check_json`` and its size limit)."""
    from pgbg import child

    try:
        storable.check_json(value, "result")
        return len(json.dumps(value, allow_nan=False)) <= child.MAX_REPORT - 4096
    except (pgbg.PgbgError, TypeError, ValueError):
        return False


def _pgbg_options(where: str, func: str, options: Mapping[str, Any]) -> None:
    """pgbg's own checks of the options (nothing is written), as ``InvalidTask``."""
    try:
        api._options(func, options.get("task_type", "check"), 0, options.get("num_proc", 0),
                     options.get("num_of_task_type"), options.get("max_attempts", 1),
                     options.get("timeout"))
        api._unique(options.get("unique_key"), True)
    except pgbg.PgbgError as exc:
        raise InvalidTask(f"{where}: {exc}") from None


def _json_arguments(task: Task, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """The arguments as JSON values (Django's ``normalize_json``: tuples become lists,
    bytes UTF-8 text), or ``InvalidTaskArguments`` naming the one that is not."""
    values: list[Any] = []
    for index, value in enumerate(args):
        values.append(_json(task, f"args[{index}]", value))
    named = {}
    for key, value in kwargs.items():
        named[key] = _json(task, f"kwargs[{key!r}]", value)
    return values, named


def _json(task: Task, where: str, value: Any) -> Any:
    try:
        return normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidTaskArguments(f"{task.module_path}: {where} is not JSON "
                                   f"({type(value).__name__}: {exc})") from None


_TRACEBACK = "Traceback (most recent call last):"
_CLASS = re.compile(r"[A-Za-z_][\w.]*")


def exception_class_path(row: BackgroundTask) -> str:
    """The dotted path of the exception that ended a failed task, read from the traceback
    the child recorded (its last exception: the one raised out of the task); a task that
    ended without one (terminated, cancelled, killed, timed out) has pgbg's ``TaskFailed``."""
    text = row.error or ""
    start = text.rfind(_TRACEBACK)
    if row.status is TaskStatus.FAILED and start >= 0:
        for line in text[start + len(_TRACEBACK):].splitlines()[1:]:
            if line and not line[0].isspace():
                match = _CLASS.match(line)
                if match and (line[match.end():match.end() + 1] in ("", ":")):
                    name = match[0]
                    return name if "." in name else f"builtins.{name}"
                break
    return "pgbg.exceptions.TaskFailed"
