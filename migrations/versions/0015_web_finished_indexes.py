"""The dashboard's reads cost the same over a long history (issue 16, ``pgbg web``).

- ``task_finished_type_idx`` (task_type, finished_at) over finished tasks: ``/tasks?type=T``
  pages through one type's history, newest first, however rare the type; without it a
  type with few tasks among a million read the whole ``task_finished_at_idx``.
- ``task_unsuccessful_idx`` (finished_at) over finished tasks that did not succeed:
  failures (the overview's recent failures, ``/tasks?status=failed``, a bulk retry) are
  found without reading the successes; a queue with no failures at all answers at once.
  Only unsuccessful rows enter it, so it costs a successful task nothing.
- The ``pgbg.queue`` view reads the queued tasks through the claim's two partial indexes
  (one branch each, its WHERE the index predicate word for word) instead of scanning the
  table: behind a million finished tasks it read them all. Same rows, same columns.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

from pgbg.migrations.versions import definition

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

PREVIOUS_VIEW = definition("0011_error_exit_holds_its_slot.py", "QUEUE_VIEW")
FREE = "num_proc = 0 AND num_of_task_type = '{}'::jsonb"
OLD_FROM = """          FROM pgbg.task t CROSS JOIN total
         WHERE t.status = 'queued'"""
NEW_FROM = f"""          FROM (SELECT * FROM pgbg.task WHERE status = 'queued' AND {FREE}
                UNION ALL
                SELECT * FROM pgbg.task WHERE status = 'queued' AND ({FREE}) IS NOT TRUE
               ) t CROSS JOIN total"""
if PREVIOUS_VIEW.count(OLD_FROM) != 1:
    raise RuntimeError("revision 0015 cannot find the view it rewrites")
QUEUE_VIEW = PREVIOUS_VIEW.replace(OLD_FROM, NEW_FROM)


def upgrade() -> None:
    op.create_index("task_finished_type_idx", "task", ["task_type", "finished_at"],
                    schema="pgbg", postgresql_where=sa.text("finished_at IS NOT NULL"))
    op.create_index("task_unsuccessful_idx", "task", ["finished_at"], schema="pgbg",
                    postgresql_where=sa.text(
                        "finished_at IS NOT NULL AND status <> 'succeeded'::pgbg.task_status"))
    op.execute(QUEUE_VIEW)


def downgrade() -> None:
    op.execute(PREVIOUS_VIEW)
    op.drop_index("task_unsuccessful_idx", "task", schema="pgbg")
    op.drop_index("task_finished_type_idx", "task", schema="pgbg")
