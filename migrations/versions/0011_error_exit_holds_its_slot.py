"""A task that recorded its own failure keeps its limit slot until its process exits.

``record_task_error_exit`` marks the row failed at once (it reads as failed, as in the
original module), but its process goes on, cleaning up. Until it exits, ``finished_at``
stays NULL, and the claim and the queue view count such a row as running: its limit slot
is not given to another task while the process still holds what the limit protects.
A partial index keeps that count as cheap as the count of running rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

from pgbg.migrations.versions import definition

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Rows whose process still runs: the running, and the failed whose process has not exited.
HOLDS_SLOT = "(status = 'running' OR (status = 'failed' AND finished_at IS NULL))"

PREVIOUS_CLAIM = definition("0010_checked_options.py", "CLAIM_FUNCTION")
OLD_COUNT = """             WHERE status = 'running' GROUP BY task_type) running;"""
NEW_COUNT = f"""             WHERE {HOLDS_SLOT} GROUP BY task_type) running;"""
if PREVIOUS_CLAIM.count(OLD_COUNT) != 1:  # revision 0010 is fixed: this never changes
    raise RuntimeError("revision 0011 cannot find the count it rewrites")
CLAIM_FUNCTION = PREVIOUS_CLAIM.replace(OLD_COUNT, NEW_COUNT)
CLAIM_SIGNATURE = "pgbg.task_claim(uuid, text, integer)"

PREVIOUS_VIEW = definition("0010_checked_options.py", "QUEUE_VIEW")
OLD_RUNNING = """             WHERE status = 'running' GROUP BY task_type
        ), total AS ("""
NEW_RUNNING = f"""             WHERE {HOLDS_SLOT} GROUP BY task_type
        ), total AS ("""
if PREVIOUS_VIEW.count(OLD_RUNNING) != 1:
    raise RuntimeError("revision 0011 cannot find the view it rewrites")
QUEUE_VIEW = PREVIOUS_VIEW.replace(OLD_RUNNING, NEW_RUNNING)


def upgrade() -> None:
    op.create_index("task_error_exit_idx", "task", ["task_type"], schema="pgbg",
                    postgresql_where="status = 'failed' AND finished_at IS NULL")
    op.execute(CLAIM_FUNCTION)  # CREATE OR REPLACE resets the function's settings:
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.execute(QUEUE_VIEW)


def downgrade() -> None:
    op.execute(PREVIOUS_VIEW)
    op.execute(PREVIOUS_CLAIM)
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.drop_index("task_error_exit_idx", "task", schema="pgbg")
