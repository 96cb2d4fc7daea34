"""pgbg's tables as Django models, for the admin and for queries joining them to the
application's own tables. ``managed = False``: Django never creates, alters or drops them;
pgbg's own migrations do (``manage.py migrate`` runs those).

They read ``PGBG_DATABASE`` (their managers' querysets are on that alias, so the admin
and ``Task.objects`` follow it) and never write: ``save``, ``delete`` and the querysets'
``update``, ``delete``, ``bulk_create`` and ``bulk_update`` raise ``TypeError``."""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.exceptions import ValidationError
from django.db import models

from pgbg.models import TaskStatus

_REFUSED = ("rows change only through pgbg's API (pgbg.terminate_background, "
            "pgbg.retry_task, ...), never by the ORM")


class ReadOnlyQuerySet(models.QuerySet):
    """A queryset of pgbg's rows: reads, never writes."""

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{self.model.__name__} {_REFUSED}")

    update = _update = delete = _raw_delete = bulk_create = bulk_update = _refuse


class PgbgManager(models.Manager):
    """Querysets on ``PGBG_DATABASE``, read-only."""

    def get_queryset(self) -> ReadOnlyQuerySet:
        from pgbg.contrib.django import conf

        return ReadOnlyQuerySet(self.model, using=self._db or conf.database_alias())


class StatusField(models.TextField):
    """``pgbg.task.status`` (the enum ``pgbg.task_status``): a value outside it is
    Django's ``ValidationError`` in a lookup (the admin's ``?status__exact=bogus`` shows
    its "incorrect lookup" page), never the database's error."""

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is not None and value not in STATUSES:
            raise ValidationError(f"{value!r} is not a pgbg task status "
                                  f"({', '.join(STATUSES)})", code="invalid_choice")
        return value


STATUSES = tuple(status.value for status in TaskStatus)


class TextArrayField(models.Field):
    """A ``text[]`` column, read as a list of str (psycopg reads arrays so): pgbg's
    ``retry_on``, without asking for ``django.contrib.postgres`` in ``INSTALLED_APPS``
    (its ``ArrayField`` does) for a column that is only ever read here."""

    def db_type(self, connection: Any) -> str:
        return "text[]"


class Task(models.Model):
    """A row of ``pgbg.task``."""

    STATUS_CHOICES = [(status.value, status.value) for status in TaskStatus]

    objects = PgbgManager()

    id = models.UUIDField(primary_key=True)
    task_type = models.TextField()
    func = models.TextField()
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    priority = models.IntegerField(default=0)
    status = StatusField(choices=STATUS_CHOICES, default="queued")
    num_proc = models.IntegerField(default=0)
    num_of_task_type = models.JSONField(default=dict)
    queued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    worker_id = models.UUIDField(null=True)
    hostname = models.TextField(null=True)
    pid = models.IntegerField(null=True)
    attempt = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=1)
    timeout = models.FloatField(null=True)
    exit_code = models.IntegerField(null=True)
    signal = models.IntegerField(null=True)
    info = models.TextField(null=True)
    error = models.TextField(null=True)
    result = models.JSONField(null=True)
    cancel_requested_at = models.DateTimeField(null=True)
    cancel_requested_by = models.TextField(null=True)
    run_at = models.DateTimeField(null=True)
    unique_key = models.TextField(null=True)
    unique_running = models.BooleanField(default=True)
    retry_on = TextArrayField(null=True)
    retry_backoff = models.FloatField(null=True)
    periodic = models.TextField(null=True)
    period = models.DateTimeField(null=True)
    complete = models.BooleanField(default=False)
    completed_successfully = models.BooleanField(default=False)

    class Meta:
        managed = False
        db_table = '"pgbg"."task"'
        ordering = ["-queued_at"]
        verbose_name = "task"

    def __str__(self) -> str:
        return f"{self.task_type} {self.id} ({self.status})"


class TaskLog(models.Model):
    """A line of ``pgbg.task_log``: progress, errors and captured output (level ``output``)."""

    objects = PgbgManager()

    id = models.BigAutoField(primary_key=True)
    task = models.ForeignKey(Task, models.DO_NOTHING, db_constraint=False,
                             related_name="log_lines")
    at = models.DateTimeField()
    level = models.TextField()
    message = models.TextField()

    class Meta:
        managed = False
        db_table = '"pgbg"."task_log"'
        ordering = ["id"]
        verbose_name = "log line"

    def __str__(self) -> str:
        return f"{self.at} {self.level}"


class TaskLink(models.Model):
    """A row of ``pgbg.task_link`` (``record_task_related(kind, key)``), e.g. to join
    ``Study`` to the tasks that worked on it: ``kind="study", key=str(study.pk)``."""

    objects = PgbgManager()

    pk = models.CompositePrimaryKey("task", "kind", "key")
    task = models.ForeignKey(Task, models.DO_NOTHING, db_constraint=False,
                             related_name="links")
    kind = models.TextField()
    key = models.TextField()

    class Meta:
        managed = False
        db_table = '"pgbg"."task_link"'
        verbose_name = "link"

    def __str__(self) -> str:
        return f"{self.kind}: {self.key}"


class Worker(models.Model):
    """A live worker (``pgbg.worker``)."""

    objects = PgbgManager()

    id = models.UUIDField(primary_key=True)
    hostname = models.TextField()
    pid = models.IntegerField()
    concurrency = models.IntegerField()
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = '"pgbg"."worker"'
        ordering = ["hostname", "pid"]
        verbose_name = "worker"

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"


def _read_only(self: models.Model, *args: object, **kwargs: object) -> None:
    raise TypeError(f"{type(self).__name__} {_REFUSED}")


for _model in (Task, TaskLog, TaskLink, Worker):
    _model.save = _read_only
    _model.delete = _read_only
