"""Retries: which failures a task is retried on, and its backoff base.

``retry_on``: qualified exception class names (NULL: any failure); ``retry_backoff``: the
first delay in seconds (NULL: the worker's default), doubled per attempt with jitter.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("task", sa.Column("retry_on", postgresql.ARRAY(sa.Text()), nullable=True),
                  schema="pgbg")
    op.add_column("task", sa.Column("retry_backoff", sa.Float(), nullable=True), schema="pgbg")


def downgrade() -> None:
    op.drop_column("task", "retry_backoff", schema="pgbg")
    op.drop_column("task", "retry_on", schema="pgbg")
