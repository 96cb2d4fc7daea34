"""``pgbg.task_step`` writes pids and outcomes by primary key, one row at a time.

The set-based form of 0004 joined the task table to ``jsonb_to_recordset(...)``; the
planner cannot see how many rows a JSON array holds (it assumes 100) and, trusting the
statistics on ``worker_id``, chose a sequential scan of the whole task table for every
step that wrote a pid or an outcome: 1 ms on 3,000 rows, growing with every finished task
kept. A step writes a handful of rows, so a loop of single-row updates by ``id`` (always
the primary key index) is both the cheaper plan and one that cannot go wrong.

An outcome may carry the task's pid: a task that ends before its pid was written gets
both in one row version instead of two.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from alembic import op

from pgbg.migrations.versions import definition

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STEP_FUNCTION = """
CREATE OR REPLACE FUNCTION pgbg.task_step(p_worker_id uuid, p_hostname text, p_max integer,
                                          p_pids jsonb, p_outcomes jsonb)
RETURNS TABLE(kind text, task jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    o record;
BEGIN
    FOR p IN SELECT * FROM jsonb_to_recordset(p_pids) AS x(id uuid, attempt integer, pid integer)
    LOOP
        UPDATE pgbg.task t SET pid = p.pid
         WHERE t.id = p.id AND t.attempt = p.attempt AND t.worker_id = p_worker_id
           AND t.status = 'running';
    END LOOP;

    FOR o IN SELECT * FROM jsonb_to_recordset(p_outcomes)
                AS x(id uuid, attempt integer, status text, result jsonb, error text,
                     exit_code integer, signal integer, error_exit boolean, pid integer)
    LOOP
        -- fenced by (worker, attempt, state); a task that recorded its own failure keeps
        -- its status and message and only gains the exit code
        UPDATE pgbg.task t
           SET status = CASE WHEN t.status = 'running'
                             THEN o.status::pgbg.task_status ELSE t.status END,
               result = CASE WHEN t.status = 'running'
                             THEN nullif(o.result, 'null'::jsonb) ELSE t.result END,
               error = CASE WHEN t.status = 'running' THEN o.error ELSE t.error END,
               finished_at = coalesce(t.finished_at, clock_timestamp()),
               exit_code = o.exit_code, signal = o.signal, pid = coalesce(o.pid, t.pid)
         WHERE t.id = o.id AND t.worker_id = p_worker_id AND t.attempt = o.attempt
           AND (t.status = 'running'
                OR (o.error_exit AND t.status = 'failed' AND t.exit_code IS NULL));
        IF FOUND THEN
            PERFORM pg_notify('pgbg_done', o.id::text);
        ELSE
            kind := 'unwritten';
            task := to_jsonb(o.id);
            RETURN NEXT;
        END IF;
    END LOOP;

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
    previous = definition("0004_task_step.py", "STEP_FUNCTION")
    op.execute(previous.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
