"""Reporting views: the queue with positions and blocking reasons, per-type statistics,
task durations, and tasks joined to the application objects they worked on.

These views are the stable SQL surface for reports; their column names are part of
pgbg's interface.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS = {
    # Waiting tasks in the order workers consider them, with what blocks each one now.
    "queue": """
        WITH running AS (
            SELECT task_type, count(*) AS n FROM pgbg.task
             WHERE status = 'running' GROUP BY task_type
        ), total AS (
            SELECT coalesce(sum(n), 0)::bigint AS n FROM running
        )
        SELECT row_number() OVER (ORDER BY t.priority DESC, t.queued_at, t.id)
                   AS queue_position,
               t.id, t.task_type, t.func, t.priority, t.num_proc, t.num_of_task_type,
               t.queued_at, now() - t.queued_at AS waiting,
               array_remove(
                   ARRAY[CASE WHEN t.num_proc > 0 AND total.n >= t.num_proc
                              THEN format('num_proc: %s tasks running, limit %s',
                                          total.n, t.num_proc) END]
                   || ARRAY(SELECT format('%s: %s running, limit %s', l.key, r.n, l.value)
                              FROM jsonb_each_text(t.num_of_task_type) l
                              JOIN running r ON r.task_type = l.key
                             WHERE r.n >= l.value::integer
                             ORDER BY l.key),
                   NULL) AS blocked_by
          FROM pgbg.task t CROSS JOIN total
         WHERE t.status = 'queued'
    """,
    # One row per task with how long it waited and ran.
    "task_duration": """
        SELECT id, task_type, status, attempt, queued_at, started_at, finished_at,
               started_at - queued_at AS wait_time,
               finished_at - started_at AS run_time
          FROM pgbg.task
    """,
    # Per type, over all history: counts by state and wait/run time percentiles.
    "task_type_stats": """
        SELECT task_type,
               count(*) FILTER (WHERE status = 'queued') AS queued,
               count(*) FILTER (WHERE status = 'running') AS running,
               count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE status = 'terminated') AS terminated,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_time) AS wait_p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_time) AS wait_p95,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY run_time) AS run_p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY run_time) AS run_p95
          FROM pgbg.task_duration
         GROUP BY task_type
    """,
    # Tasks joined to the application objects they recorded (record_task_related).
    "task_linked": """
        SELECT l.kind, l.key, t.id AS task_id, t.task_type, t.status, t.attempt,
               t.queued_at, t.started_at, t.finished_at, t.error
          FROM pgbg.task_link l JOIN pgbg.task t ON t.id = l.task_id
    """,
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW pgbg.{name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW pgbg.{name}")
