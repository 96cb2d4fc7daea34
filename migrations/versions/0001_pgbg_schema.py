"""pgbg schema: tasks, their logs and links, workers, and the claim function.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Every claim takes this advisory lock for its transaction: shared when only tasks
# without limits wait (claimers then run in parallel), exclusive when a task with limits
# may be claimed, so its limit check sees every claim that committed before it and no
# claim can commit in between. The lock key is fixed: queries.py uses the same one.
CLAIM_FUNCTION = """
CREATE FUNCTION pgbg.task_claim(p_worker_id uuid, p_hostname text, p_max integer)
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
                   WHERE status = 'queued'
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

    FOR v_task IN SELECT * FROM pgbg.task WHERE status = 'queued'
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


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('task',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('task_type', sa.Text(), nullable=False),
    sa.Column('func', sa.Text(), nullable=False),
    sa.Column('args', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('kwargs', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('priority', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', 'terminated', name='task_status', schema='pgbg'), server_default=sa.text("'queued'"), nullable=False),
    sa.Column('num_proc', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('num_of_task_type', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_id', sa.UUID(), nullable=True),
    sa.Column('hostname', sa.Text(), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('attempt', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('max_attempts', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('timeout', sa.Float(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('signal', sa.Integer(), nullable=True),
    sa.Column('info', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_requested_by', sa.Text(), nullable=True),
    sa.Column('complete', sa.Boolean(), sa.Computed("status <> 'queued'::pgbg.task_status AND status <> 'running'::pgbg.task_status", persisted=True), nullable=False),
    sa.Column('completed_successfully', sa.Boolean(), sa.Computed("status = 'succeeded'::pgbg.task_status", persisted=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    schema='pgbg'
    )
    op.create_index('task_claim_idx', 'task', [sa.literal_column('priority DESC'), 'queued_at', 'id'], unique=False, schema='pgbg', postgresql_where=sa.text("status = 'queued'"))
    op.create_index('task_claim_limited_idx', 'task', [sa.literal_column('priority DESC'), 'queued_at', 'id'], unique=False, schema='pgbg', postgresql_where=sa.text("status = 'queued' AND (num_proc > 0 OR num_of_task_type <> '{}'::jsonb)"))
    op.create_index('task_finished_at_idx', 'task', ['finished_at'], unique=False, schema='pgbg', postgresql_where=sa.text('finished_at IS NOT NULL'))
    op.create_index('task_running_idx', 'task', ['task_type', 'worker_id'], unique=False, schema='pgbg', postgresql_where=sa.text("status = 'running'"))
    op.create_table('worker',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('hostname', sa.Text(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    schema='pgbg'
    )
    op.create_table('task_link',
    sa.Column('task_id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['pgbg.task.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'kind', 'key'),
    schema='pgbg'
    )
    op.create_index('task_link_object_idx', 'task_link', ['kind', 'key'], unique=False, schema='pgbg')
    op.create_table('task_log',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.UUID(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.Column('level', sa.Text(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['pgbg.task.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    schema='pgbg'
    )
    op.create_index('task_log_task_idx', 'task_log', ['task_id', 'id'], unique=False, schema='pgbg')
    op.execute(CLAIM_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION pgbg.task_claim(uuid, text, integer)")
    op.drop_index('task_log_task_idx', table_name='task_log', schema='pgbg')
    op.drop_table('task_log', schema='pgbg')
    op.drop_index('task_link_object_idx', table_name='task_link', schema='pgbg')
    op.drop_table('task_link', schema='pgbg')
    op.drop_table('worker', schema='pgbg')
    op.drop_index('task_running_idx', table_name='task', schema='pgbg', postgresql_where=sa.text("status = 'running'"))
    op.drop_index('task_finished_at_idx', table_name='task', schema='pgbg', postgresql_where=sa.text('finished_at IS NOT NULL'))
    op.drop_index('task_claim_limited_idx', table_name='task', schema='pgbg', postgresql_where=sa.text("status = 'queued' AND (num_proc > 0 OR num_of_task_type <> '{}'::jsonb)"))
    op.drop_index('task_claim_idx', table_name='task', schema='pgbg', postgresql_where=sa.text("status = 'queued'"))
    op.drop_table('task', schema='pgbg')
    sa.Enum(name='task_status', schema='pgbg').drop(op.get_bind())
