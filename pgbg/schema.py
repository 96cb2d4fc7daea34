"""The pgbg schema as SQLAlchemy metadata: the one source the migrations are checked against.

Runtime code never imports this module (the worker talks to psycopg directly, keeping
the process that forks small); Alembic and the schema tests do.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from pgbg.models import TaskStatus

SCHEMA = "pgbg"
metadata = MetaData(schema=SCHEMA)

task_status = Enum(
    *[s.value for s in TaskStatus], name="task_status", schema=SCHEMA, metadata=metadata
)

# complete / completed_successfully are derived from status by the database itself,
# so they can never disagree with it.
_TERMINAL = "status <> 'queued'::pgbg.task_status AND status <> 'running'::pgbg.task_status"
_FREE = "num_proc = 0 AND num_of_task_type = '{}'::jsonb"  # no limits


def _option_checks(table: str) -> list[CheckConstraint]:
    """What the claim and the retry arithmetic rely on (migration 0010 defines
    ``pgbg.type_limits_valid``); the same on tasks and on periodic tasks."""
    checks = {
        "num_of_task_type_valid": "pgbg.type_limits_valid(num_of_task_type)",
        "num_proc_valid": "num_proc >= 0",
        "max_attempts_valid": "max_attempts >= 1 AND max_attempts <= 1000",
        "retry_backoff_valid":
            "retry_backoff IS NULL OR (retry_backoff >= 0 AND retry_backoff <= 3600)",
        "timeout_valid": "timeout IS NULL OR (timeout > 0 AND timeout < 'Infinity'::float8)",
    }
    return [CheckConstraint(check, name=f"{table}_{name}") for name, check in checks.items()]


task = Table(
    "task",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("task_type", Text, nullable=False),
    Column("func", Text, nullable=False),
    Column("args", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("kwargs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("status", task_status, nullable=False, server_default=text("'queued'")),
    Column("num_proc", Integer, nullable=False, server_default=text("0")),
    Column("num_of_task_type", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("queued_at", DateTime(timezone=True), nullable=False,
           server_default=text("clock_timestamp()")),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("worker_id", UUID(as_uuid=True)),
    Column("hostname", Text),
    Column("pid", Integer),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("1")),
    Column("timeout", Float),  # seconds the task may run; NULL: the worker's default
    Column("exit_code", Integer),
    Column("signal", Integer),
    Column("info", Text),
    Column("error", Text),
    Column("result", JSONB),
    Column("cancel_requested_at", DateTime(timezone=True)),
    Column("cancel_requested_by", Text),
    Column("run_at", DateTime(timezone=True)),  # not claimed before; NULL: at once
    Column("unique_key", Text),
    Column("unique_running", Boolean, nullable=False, server_default=text("true")),
    Column("retry_on", ARRAY(Text)),  # exception class names retried; NULL: any failure
    Column("retry_backoff", Float),  # first retry delay, seconds; NULL: the worker's default
    Column("periodic", Text),  # the periodic task that queued it, if one did
    Column("period", DateTime(timezone=True)),  # ... and for which period
    Column("complete", Boolean, Computed(_TERMINAL, persisted=True), nullable=False),
    Column("completed_successfully", Boolean,
           Computed("status = 'succeeded'::pgbg.task_status", persisted=True), nullable=False),
    # Partial indexes over the live states only, so claiming and limit checks cost the
    # same whether the table holds a hundred finished tasks or ten million.
    # The claim's streams (migration 0014): unlimited tasks in claim order; tasks with
    # limits grouped by them (a skip scan finds the groups, a probe each group's head), and
    # in claim order for the walk when there are many groups.
    Index("task_claim_limited_idx", text("priority DESC"), "queued_at", "id",
          postgresql_where=text(f"status = 'queued' AND ({_FREE}) IS NOT TRUE")),
    Index("task_claim_free_idx", text("priority DESC"), "queued_at", "id",
          postgresql_where=text(f"status = 'queued' AND {_FREE}")),
    Index("task_claim_group_idx", text("coalesce(num_of_task_type::text, 'null')"),
          text("coalesce(num_proc, -1)"), text("priority DESC"), "queued_at", "id",
          postgresql_where=text(f"status = 'queued' AND ({_FREE}) IS NOT TRUE")),
    Index("task_running_idx", "task_type", "worker_id",
          postgresql_where=text("status = 'running'")),
    # A task that recorded its own failure while its process still runs (migration 0011):
    # counted against its limits like a running one.
    Index("task_error_exit_idx", "task_type",
          postgresql_where=text("status = 'failed' AND finished_at IS NULL")),
    Index("task_finished_at_idx", "finished_at",
          postgresql_where=text("finished_at IS NOT NULL")),
    # The dashboard's lists (migration 0015): one type's history, and the failures alone.
    Index("task_finished_type_idx", "task_type", "finished_at",
          postgresql_where=text("finished_at IS NOT NULL")),
    Index("task_unsuccessful_idx", "finished_at", postgresql_where=text(
        "finished_at IS NOT NULL AND status <> 'succeeded'::pgbg.task_status")),
    Index("task_scheduled_idx", "run_at",
          postgresql_where=text("status = 'queued' AND run_at IS NOT NULL")),
    # At most one live task per key: enforced by the database, so concurrent enqueues agree.
    Index("task_unique_key_idx", "unique_key", unique=True, postgresql_where=text(
        "unique_key IS NOT NULL AND (status = 'queued' OR (status = 'running' AND "
        "unique_running))")),
    # Once per period: a property of the table, not only of the code that writes it.
    Index("task_periodic_period_idx", "periodic", "period", unique=True,
          postgresql_where=text("periodic IS NOT NULL")),
    *_option_checks("task"),
    # Names that fit their indexes, times every reader can read (migration 0012).
    CheckConstraint("octet_length(task_type) <= 255", name="task_task_type_length"),
    # the limits of a queued task are an index key (migration 0014)
    CheckConstraint("status <> 'queued' OR octet_length(num_of_task_type::text) <= 2048",
                    name="task_num_of_task_type_length"),
    CheckConstraint("unique_key IS NULL OR octet_length(unique_key) <= 1024",
                    name="task_unique_key_length"),
    CheckConstraint("run_at IS NULL OR (isfinite(run_at) AND run_at >= "
                    "'0001-01-01 00:00:00+00' AND run_at < '10000-01-01 00:00:00+00')",
                    name="task_run_at_readable"),
)

task_log = Table(
    "task_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("task_id", UUID(as_uuid=True), ForeignKey("pgbg.task.id", ondelete="CASCADE"),
           nullable=False),
    Column("at", DateTime(timezone=True), nullable=False,
           server_default=text("clock_timestamp()")),
    Column("level", Text, nullable=False),
    Column("message", Text, nullable=False),
    Index("task_log_task_idx", "task_id", "id"),
)

task_link = Table(
    "task_link",
    metadata,
    Column("task_id", UUID(as_uuid=True), ForeignKey("pgbg.task.id", ondelete="CASCADE"),
           nullable=False),
    Column("kind", Text, nullable=False),
    Column("key", Text, nullable=False),
    PrimaryKeyConstraint("task_id", "kind", "key"),
    Index("task_link_object_idx", "kind", "key"),
)

# One row per periodic task: what to queue (a task's options) and when. ``next_run_at`` is
# the next period; the worker that first finds it due queues the task and moves it on.
periodic = Table(
    "periodic",
    metadata,
    Column("name", Text, primary_key=True),
    Column("func", Text, nullable=False),
    Column("args", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("kwargs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("task_type", Text, nullable=False),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("num_proc", Integer, nullable=False, server_default=text("0")),
    Column("num_of_task_type", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("max_attempts", Integer, nullable=False, server_default=text("1")),
    Column("timeout", Float),
    Column("retry_on", ARRAY(Text)),
    Column("retry_backoff", Float),
    Column("skip_if_running", Boolean, nullable=False, server_default=text("false")),
    Column("cron", Text),  # a cron expression, read in ``timezone``; or
    Column("every", Float),  # seconds, periods counted from the Unix epoch
    Column("timezone", Text, nullable=False, server_default=text("'UTC'")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("next_run_at", DateTime(timezone=True), nullable=False),
    Column("last_period", DateTime(timezone=True)),
    Column("last_task_id", UUID(as_uuid=True)),  # NULL after a period skipped
    Column("created_at", DateTime(timezone=True), nullable=False,
           server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False,
           server_default=text("now()")),
    CheckConstraint("(cron IS NULL) <> (every IS NULL)", name="periodic_one_schedule"),
    CheckConstraint("every IS NULL OR every >= 1", name="periodic_every_positive"),
    *_option_checks("periodic"),
    CheckConstraint("octet_length(task_type) <= 255", name="periodic_task_type_length"),
    CheckConstraint("NOT enabled OR octet_length(num_of_task_type::text) <= 2048",
                    name="periodic_num_of_task_type_length"),
    Index("periodic_due_idx", "next_run_at", postgresql_where=text("enabled")),
)

worker = Table(
    "worker",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False,
           server_default=text("now()")),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False,
           server_default=text("now()")),
)
