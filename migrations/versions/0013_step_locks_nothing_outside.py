"""The worker's step statement touches the task table only inside functions.

The step's "when does the next scheduled task fall due" part read ``pgbg.task`` from the
outer statement, so it took its lock there, before the ``lock_timeout`` of the step
function (migration 0012) applied: under ``ACCESS EXCLUSIVE`` (ALTER TABLE, VACUUM FULL,
a migration) the worker waited without bound and its lease lapsed. ``pgbg.task_next_due()``
does that read with the same bounded wait.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

NEXT_DUE_FUNCTION = """
CREATE FUNCTION pgbg.task_next_due() RETURNS float8
LANGUAGE plpgsql STABLE SET lock_timeout = '5s' AS $$
BEGIN
    RETURN (SELECT extract(epoch FROM min(run_at) - now())::float8 FROM pgbg.task
             WHERE status = 'queued' AND run_at IS NOT NULL AND run_at > now());
END;
$$
"""


def upgrade() -> None:
    op.execute(NEXT_DUE_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION pgbg.task_next_due()")
