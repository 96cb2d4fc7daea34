"""The claim and the step are planned once per connection, not at every call.

PL/pgSQL plans a statement that uses the function's arguments afresh at each call while
the generic plan looks dearer than a custom one, and the claim's generic plan did: its
``UPDATE ... FROM (SELECT ... LIMIT p_max FOR UPDATE SKIP LOCKED)`` was estimated for 10%
of the table, a hash join over a sequential scan. So every claim paid 0.2 to 0.9 ms of
planning. The claim now picks its rows as ``id = ANY(ARRAY(SELECT ... LIMIT p_max))``,
an index scan of the primary key whatever ``p_max`` is, and both functions run with
``plan_cache_mode = force_generic_plan``: planned at their first call on a connection,
reused after. ``test_a_worker_step_never_scans_the_task_table`` fails if a generic plan
scans the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from alembic import op

from pgbg.migrations.versions import definition

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FUNCTIONS = ("pgbg.task_claim(uuid, text, integer)",
             "pgbg.task_step(uuid, text, integer, jsonb, jsonb)")
PREVIOUS_CLAIM = definition("0005_scheduled_and_unique.py", "CLAIM_FUNCTION")

# The unlimited claim's choice of rows; the rest of the function is unchanged.
OLD_PICK = """          FROM (SELECT id FROM pgbg.task
                 WHERE status = 'queued' AND num_proc = 0 AND num_of_task_type = '{}'::jsonb
                   AND (run_at IS NULL OR run_at <= now())
                 ORDER BY priority DESC, queued_at, id
                 LIMIT p_max
                 FOR UPDATE SKIP LOCKED) c
         WHERE t.id = c.id
"""
NEW_PICK = """         WHERE t.id = ANY(ARRAY(SELECT id FROM pgbg.task
                                 WHERE status = 'queued' AND num_proc = 0
                                   AND num_of_task_type = '{}'::jsonb
                                   AND (run_at IS NULL OR run_at <= now())
                                 ORDER BY priority DESC, queued_at, id
                                 LIMIT p_max
                                 FOR UPDATE SKIP LOCKED))
"""
if PREVIOUS_CLAIM.count(OLD_PICK) != 1:  # revision 0005 is fixed: this never changes
    raise RuntimeError("revision 0009 cannot find the claim it rewrites")
CLAIM_FUNCTION = PREVIOUS_CLAIM.replace(OLD_PICK, NEW_PICK)


def upgrade() -> None:
    op.execute(CLAIM_FUNCTION)
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET plan_cache_mode")
    op.execute(PREVIOUS_CLAIM)
