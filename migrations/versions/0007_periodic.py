"""Periodic tasks.

- ``pgbg.periodic``: one row per periodic task — what to queue (the same options as a
  task) and when (a cron expression in a time zone, or ``every`` seconds). ``next_run_at``
  is the next period; whichever worker first finds it due queues the task and moves it on
  in one transaction, the row locked ``FOR UPDATE SKIP LOCKED``, so each period is queued
  once however many workers race.
- ``pgbg.task.periodic`` / ``period``: which periodic task and which period a task was
  queued for. A unique index on the pair makes "once per period" a property of the
  table too, not only of the code that writes it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "periodic",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("func", sa.Text(), nullable=False),
        sa.Column("args", postgresql.JSONB(), nullable=False,
                  server_default=sa.text("'[]'::jsonb")),
        sa.Column("kwargs", postgresql.JSONB(), nullable=False,
                  server_default=sa.text("'{}'::jsonb")),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("num_proc", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("num_of_task_type", postgresql.JSONB(), nullable=False,
                  server_default=sa.text("'{}'::jsonb")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("retry_on", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("retry_backoff", sa.Float(), nullable=True),
        sa.Column("skip_if_running", sa.Boolean(), nullable=False,
                  server_default=sa.text("false")),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("every", sa.Float(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=False, server_default=sa.text("'UTC'")),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_period", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_task_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.CheckConstraint("(cron IS NULL) <> (every IS NULL)", name="periodic_one_schedule"),
        sa.CheckConstraint("every IS NULL OR every >= 1", name="periodic_every_positive"),
        schema="pgbg",
    )
    op.create_index("periodic_due_idx", "periodic", ["next_run_at"], schema="pgbg",
                    postgresql_where=sa.text("enabled"))
    op.add_column("task", sa.Column("periodic", sa.Text(), nullable=True), schema="pgbg")
    op.add_column("task", sa.Column("period", sa.DateTime(timezone=True), nullable=True),
                  schema="pgbg")
    op.create_index("task_periodic_period_idx", "task", ["periodic", "period"], unique=True,
                    schema="pgbg", postgresql_where=sa.text("periodic IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("task_periodic_period_idx", table_name="task", schema="pgbg")
    op.drop_column("task", "period", schema="pgbg")
    op.drop_column("task", "periodic", schema="pgbg")
    op.drop_index("periodic_due_idx", table_name="periodic", schema="pgbg")
    op.drop_table("periodic", schema="pgbg")
