"""Scheduled and unique tasks.

- ``run_at``: a task is not claimed before then (NULL: at once). The claim function gains
  that one condition; ``task_scheduled_idx`` finds the next due time for a worker's timer.
- ``unique_key``: while a task with that key is queued (and, if ``unique_running``, while it
  runs), no second one can be inserted — a partial unique index, so it holds under
  concurrent enqueues; ``enqueue`` then returns the existing task.
- ``pgbg.queue`` shows the due time and "scheduled for …" among the blocking reasons.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from pgbg.migrations.versions import definition

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNIQUE_LIVE = "unique_key IS NOT NULL AND (status = 'queued' OR (status = 'running' AND unique_running))"

CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION pgbg.task_claim(p_worker_id uuid, p_hostname text, p_max integer)
RETURNS SETOF pgbg.task
LANGUAGE plpgsql AS $$
DECLARE
    v_task pgbg.task;
    v_counts jsonb;
    v_total integer;
    v_claimed integer := 0;
    v_ok boolean;
    v_limit record;
BEGIN
    IF p_max <= 0 THEN
        RETURN;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pgbg.task
                   WHERE status = 'queued' AND (run_at IS NULL OR run_at <= now())
                     AND (num_proc > 0 OR num_of_task_type <> '{}'::jsonb)) THEN
        PERFORM pg_advisory_xact_lock_shared(7070626267);
        -- A task with limits queued since the check above is left for an exclusive claim.
        RETURN QUERY
        UPDATE pgbg.task t
           SET status = 'running', started_at = clock_timestamp(), finished_at = NULL,
               worker_id = p_worker_id, hostname = p_hostname, attempt = t.attempt + 1,
               pid = NULL, exit_code = NULL, signal = NULL, error = NULL, result = NULL,
               cancel_requested_at = NULL, cancel_requested_by = NULL
          FROM (SELECT id FROM pgbg.task
                 WHERE status = 'queued' AND num_proc = 0 AND num_of_task_type = '{}'::jsonb
                   AND (run_at IS NULL OR run_at <= now())
                 ORDER BY priority DESC, queued_at, id
                 LIMIT p_max
                 FOR UPDATE SKIP LOCKED) c
         WHERE t.id = c.id
        RETURNING t.*;
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(7070626267);
    SELECT coalesce(jsonb_object_agg(task_type, n), '{}'::jsonb), coalesce(sum(n), 0)::integer
      INTO v_counts, v_total
      FROM (SELECT task_type, count(*) AS n FROM pgbg.task
             WHERE status = 'running' GROUP BY task_type) running;

    FOR v_task IN SELECT * FROM pgbg.task WHERE status = 'queued' AND (run_at IS NULL OR run_at <= now())
                   ORDER BY priority DESC, queued_at, id
                   FOR UPDATE SKIP LOCKED
    LOOP
        -- A task its limits block is passed over; tasks behind it may still run.
        v_ok := v_task.num_proc = 0 OR v_total < v_task.num_proc;
        IF v_ok THEN
            FOR v_limit IN SELECT key, value::integer AS n
                             FROM jsonb_each_text(v_task.num_of_task_type)
            LOOP
                IF coalesce((v_counts ->> v_limit.key)::integer, 0) >= v_limit.n THEN
                    v_ok := false;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        CONTINUE WHEN NOT v_ok;

        UPDATE pgbg.task
           SET status = 'running', started_at = clock_timestamp(), finished_at = NULL,
               worker_id = p_worker_id, hostname = p_hostname, attempt = attempt + 1,
               pid = NULL, exit_code = NULL, signal = NULL, error = NULL, result = NULL,
               cancel_requested_at = NULL, cancel_requested_by = NULL
         WHERE id = v_task.id
        RETURNING * INTO v_task;
        RETURN NEXT v_task;

        v_total := v_total + 1;
        v_counts := jsonb_set(v_counts, ARRAY[v_task.task_type],
                              to_jsonb(coalesce((v_counts ->> v_task.task_type)::integer, 0) + 1));
        v_claimed := v_claimed + 1;
        EXIT WHEN v_claimed >= p_max;
    END LOOP;
END;
$$
"""

QUEUE_VIEW = """CREATE OR REPLACE VIEW pgbg.queue AS
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
                   ARRAY[CASE WHEN t.run_at > now()
                              THEN format('scheduled for %s', t.run_at) END,
                         CASE WHEN t.num_proc > 0 AND total.n >= t.num_proc
                              THEN format('num_proc: %s tasks running, limit %s',
                                          total.n, t.num_proc) END]
                   || ARRAY(SELECT format('%s: %s running, limit %s', l.key, r.n, l.value)
                              FROM jsonb_each_text(t.num_of_task_type) l
                              JOIN running r ON r.task_type = l.key
                             WHERE r.n >= l.value::integer
                             ORDER BY l.key),
                   NULL) AS blocked_by,
               t.run_at
          FROM pgbg.task t CROSS JOIN total
         WHERE t.status = 'queued'
    """


def _previous(module: str, name: str) -> str:
    value = definition(module, name)
    return value if isinstance(value, str) else value["queue"]


def upgrade() -> None:
    op.add_column("task", sa.Column("run_at", sa.DateTime(timezone=True), nullable=True),
                  schema="pgbg")
    op.add_column("task", sa.Column("unique_key", sa.Text(), nullable=True), schema="pgbg")
    op.add_column("task", sa.Column("unique_running", sa.Boolean(), nullable=False,
                                    server_default=sa.text("true")), schema="pgbg")
    op.create_index("task_scheduled_idx", "task", ["run_at"], schema="pgbg",
                    postgresql_where=sa.text("status = 'queued' AND run_at IS NOT NULL"))
    op.create_index("task_unique_key_idx", "task", ["unique_key"], unique=True, schema="pgbg",
                    postgresql_where=sa.text(UNIQUE_LIVE))
    op.execute(CLAIM_FUNCTION)
    op.execute(QUEUE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW pgbg.queue")
    op.execute("CREATE VIEW pgbg.queue AS " + _previous("0002_reporting_views.py", "VIEWS"))
    op.execute(_previous("0001_pgbg_schema.py", "CLAIM_FUNCTION").replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.drop_index("task_unique_key_idx", table_name="task", schema="pgbg")
    op.drop_index("task_scheduled_idx", table_name="task", schema="pgbg")
    for column in ("unique_running", "unique_key", "run_at"):
        op.drop_column("task", column, schema="pgbg")
