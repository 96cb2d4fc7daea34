"""``pgbg.task_step``: a worker's whole loop step in one statement.

A worker's step used to be a transaction of four round trips (record pids, write
outcomes, claim, commit). In one function call it is one round trip and one commit —
the commit being the one part that must wait for the disk (a claim must be durable
before its task starts: a task runs at most once).

Outcomes are written fenced by (worker, attempt, state) exactly as before; the ids that
could not be written (the task is no longer this worker's) come back as ``unwritten``
rows, the claimed tasks as ``claimed`` rows (the task as JSON).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STEP_FUNCTION = """
CREATE FUNCTION pgbg.task_step(p_worker_id uuid, p_hostname text, p_max integer,
                               p_pids jsonb, p_outcomes jsonb)
RETURNS TABLE(kind text, task jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_array_length(p_pids) > 0 THEN
        UPDATE pgbg.task t SET pid = p.pid
          FROM jsonb_to_recordset(p_pids) AS p(id uuid, attempt integer, pid integer)
         WHERE t.id = p.id AND t.attempt = p.attempt AND t.worker_id = p_worker_id
           AND t.status = 'running';
    END IF;

    IF jsonb_array_length(p_outcomes) > 0 THEN
        RETURN QUERY
        WITH outcome AS (
            SELECT * FROM jsonb_to_recordset(p_outcomes)
                AS o(id uuid, attempt integer, status text, result jsonb, error text,
                     exit_code integer, signal integer, error_exit boolean)
        ), written AS (
            UPDATE pgbg.task t
               SET status = CASE WHEN t.status = 'running'
                                 THEN o.status::pgbg.task_status ELSE t.status END,
                   result = CASE WHEN t.status = 'running'
                                 THEN nullif(o.result, 'null'::jsonb) ELSE t.result END,
                   error = CASE WHEN t.status = 'running' THEN o.error ELSE t.error END,
                   finished_at = coalesce(t.finished_at, clock_timestamp()),
                   exit_code = o.exit_code, signal = o.signal
              FROM outcome o
             WHERE t.id = o.id AND t.worker_id = p_worker_id AND t.attempt = o.attempt
               AND (t.status = 'running'
                    OR (o.error_exit AND t.status = 'failed' AND t.exit_code IS NULL))
            RETURNING t.id
        ), notified AS (
            SELECT id, pg_notify('pgbg_done', id::text) FROM written
        )
        SELECT 'unwritten'::text, to_jsonb(o.id) FROM outcome o
         WHERE o.id NOT IN (SELECT id FROM notified);
    END IF;

    IF p_max > 0 THEN
        RETURN QUERY
        SELECT 'claimed'::text, to_jsonb(c) FROM pgbg.task_claim(p_worker_id, p_hostname, p_max) c;
    END IF;
END;
$$
"""


def upgrade() -> None:
    op.execute(STEP_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION pgbg.task_step(uuid, text, integer, jsonb, jsonb)")
