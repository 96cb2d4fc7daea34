"""A claim's cost does not grow with the queued tasks its limits block.

The claim of 0004 to 0011 took the exclusive advisory lock as soon as any task with limits
was due, then walked every queued row in claim order with ``FOR UPDATE SKIP LOCKED``:
behind 20,000 queued ``{"import": 1}`` tasks (OpenREM's imports, one running) every claim
of every worker, one at a time, locked — and so wrote — 20,000 rows to find the
unlimited task behind them.

Tasks that share their limits (``num_of_task_type`` and ``num_proc``) form a *group*;
at any moment a group's tasks are all allowed or all blocked. The claim now:

1. finds the groups with queued tasks, one index probe per group
   (``task_claim_group_idx``, a skip scan; at most ``MAX_GROUPS`` + 1 probes);
2. counts what runs (the running rows, plus the failed whose process has not exited:
   migration 0011);
3. for each group its limits allow, reads the group's first due task (one probe), and
   the first due unlimited task (``task_claim_free_idx``); a blocked group costs nothing
   beyond its probe in step 1;
4. only if a limited task can be claimed takes the exclusive lock, counts again under it
   and claims in claim order, one task at a time, locking only the row it takes (the
   counts advance with each claim); otherwise claims unlimited tasks under the shared
   lock as before, so claims behind a blocked backlog run side by side.

With more than ``MAX_GROUPS`` groups (a limit per customer, say) probing them one by one
would cost more than the walk it replaces, so the claim walks the queue in claim order as
before — but reading, not locking, the rows it passes over.

The limits are part of an index key now, so their text is bounded (2,048 bytes, checked
by ``enqueue`` too): a longer one could not be indexed. Rows from before are repaired as
in 0010: a queued task whose limits are longer is failed, saying why; the limits of a
finished one are cleared; a periodic task with them is disabled and its limits cleared.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from alembic import op

from pgbg.migrations.versions import definition

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

MAX_GROUPS = 64
LIMITS_BYTES = 2048
ADVISORY_LOCK = 7070626267
CLAIM_SIGNATURE = "pgbg.task_claim(uuid, text, integer)"

FREE = "num_proc = 0 AND num_of_task_type = '{}'::jsonb"
GROUP_KEY = "(num_of_task_type::text)"
DUE = "(run_at IS NULL OR run_at <= now())"
LIMITS_LENGTH = f"octet_length(num_of_task_type::text) <= {LIMITS_BYTES}"
# what a claim sets: the task runs, this attempt is this worker's, nothing of the last
CLAIMED = """status = 'running', started_at = clock_timestamp(), finished_at = NULL,
           worker_id = p_worker_id, hostname = p_hostname, attempt = t.attempt + 1,
           pid = NULL, exit_code = NULL, signal = NULL, error = NULL, result = NULL,
           cancel_requested_at = NULL, cancel_requested_by = NULL"""

ALLOW_FUNCTION = """
CREATE FUNCTION pgbg.limits_allow(p_limits jsonb, p_num_proc integer, p_counts jsonb,
                                  p_total integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Whether a task with these limits may start while p_counts (per type) and p_total
    -- (all types) run. The limits must be valid (pgbg.type_limits_valid).
    SELECT (p_num_proc = 0 OR p_total < p_num_proc)
       AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(p_limits) AS l(key, value)
                        WHERE coalesce((p_counts ->> l.key)::integer, 0) >= l.value::integer)
$$
"""

CLAIM_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pgbg.task_claim(p_worker_id uuid, p_hostname text, p_max integer)
RETURNS SETOF pgbg.task
LANGUAGE plpgsql AS $$
DECLARE
    -- the groups of queued limited tasks (see migration 0014), side by side; NULL when
    -- there are more than {MAX_GROUPS}: the claim then walks the queue in claim order
    v_keys text[];
    v_limits jsonb[];
    v_procs integer[];
    v_counts jsonb;
    v_total integer;
    v_pick record;
    v_task pgbg.task;
    v_passed uuid[] := '{{}}';  -- picked, but locked by another transaction
    v_claimed integer := 0;
BEGIN
    IF p_max <= 0 THEN
        RETURN;
    END IF;

    WITH RECURSIVE grp(k, lim, np, n) AS (
        (SELECT {GROUP_KEY}, num_of_task_type, num_proc, 1 FROM pgbg.task
          WHERE status = 'queued' AND NOT ({FREE})
          ORDER BY {GROUP_KEY}, num_proc LIMIT 1)
        UNION ALL
        SELECT nxt.k, nxt.lim, nxt.np, grp.n + 1 FROM grp CROSS JOIN LATERAL (
            SELECT {GROUP_KEY} AS k, num_of_task_type AS lim, num_proc AS np FROM pgbg.task
             WHERE status = 'queued' AND NOT ({FREE})
               AND ({GROUP_KEY}, num_proc) > (grp.k, grp.np)
             ORDER BY {GROUP_KEY}, num_proc LIMIT 1) nxt
         WHERE grp.n <= {MAX_GROUPS}
    )
    SELECT CASE WHEN count(*) <= {MAX_GROUPS} THEN coalesce(array_agg(k), '{{}}') END,
           array_agg(lim), array_agg(np)
      INTO v_keys, v_limits, v_procs FROM grp;

    IF v_keys IS NULL OR cardinality(v_keys) > 0 THEN
        -- Limits no claim can read (a row that slipped past the constraints): those
        -- tasks fail alone; if even that cannot be written, they are passed over.
        IF v_keys IS NOT NULL AND EXISTS (
                SELECT 1 FROM unnest(v_limits, v_procs) AS g(lim, np)
                 WHERE g.np < 0 OR NOT pgbg.type_limits_valid(g.lim)) THEN
            FOR v_pick IN SELECT g.k, g.lim, g.np FROM unnest(v_keys, v_limits, v_procs) AS g(k, lim, np)
                           WHERE g.np < 0 OR NOT pgbg.type_limits_valid(g.lim)
            LOOP
                PERFORM pgbg.task_fail_malformed(v_pick.k, v_pick.np);
            END LOOP;
            SELECT array_agg(g.k), array_agg(g.lim), array_agg(g.np)
              INTO v_keys, v_limits, v_procs
              FROM unnest(v_keys, v_limits, v_procs) AS g(k, lim, np)
             WHERE g.np >= 0 AND pgbg.type_limits_valid(g.lim);
            v_keys := coalesce(v_keys, '{{}}');
        END IF;

        SELECT c.counts, c.total INTO v_counts, v_total FROM pgbg.task_running_counts() c;
        IF pgbg.task_pick(v_keys, v_limits, v_procs, v_counts, v_total, v_passed, true)
           IS NOT NULL THEN
            -- A limited task can start: claim under the exclusive lock, counting again.
            PERFORM pg_advisory_xact_lock({ADVISORY_LOCK});
            SELECT c.counts, c.total INTO v_counts, v_total FROM pgbg.task_running_counts() c;
            LOOP
                SELECT * INTO v_pick
                  FROM pgbg.task_pick(v_keys, v_limits, v_procs, v_counts, v_total, v_passed,
                                      false);
                EXIT WHEN v_pick.id IS NULL;
                IF v_pick.np < 0 OR NOT pgbg.type_limits_valid(v_pick.lim) THEN
                    -- met by the walk only: the group probes left malformed limits out
                    PERFORM pgbg.task_fail_malformed(v_pick.lim::text, v_pick.np);
                    v_passed := v_passed || v_pick.id;
                    CONTINUE;
                END IF;
                UPDATE pgbg.task t SET {CLAIMED}
                 WHERE t.id = (SELECT id FROM pgbg.task
                              WHERE id = v_pick.id AND status = 'queued' AND {DUE}
                              FOR UPDATE SKIP LOCKED)
                RETURNING * INTO v_task;
                IF NOT FOUND THEN
                    v_passed := v_passed || v_pick.id;
                    EXIT WHEN cardinality(v_passed) > 100;  -- locked by others: next step
                    CONTINUE;
                END IF;
                RETURN NEXT v_task;
                v_total := v_total + 1;
                v_counts := jsonb_set(v_counts, ARRAY[v_task.task_type], to_jsonb(
                    coalesce((v_counts ->> v_task.task_type)::integer, 0) + 1));
                v_claimed := v_claimed + 1;
                EXIT WHEN v_claimed >= p_max;
            END LOOP;
            RETURN;
        END IF;
    END IF;

    -- No limited task can start: unlimited tasks only, side by side with other claimers.
    -- A limited task allowed since the check above is left for the next step.
    PERFORM pg_advisory_xact_lock_shared({ADVISORY_LOCK});
    RETURN QUERY
    UPDATE pgbg.task t SET {CLAIMED}
     WHERE t.id = ANY(ARRAY(SELECT id FROM pgbg.task
                             WHERE status = 'queued' AND {FREE} AND {DUE}
                             ORDER BY priority DESC, queued_at, id
                             LIMIT p_max
                             FOR UPDATE SKIP LOCKED))
    RETURNING t.*;
END;
$$
"""

COUNTS_FUNCTION = """
CREATE FUNCTION pgbg.task_running_counts(OUT counts jsonb, OUT total integer)
LANGUAGE sql STABLE AS $$
    -- What runs, per type and in all: the running, and the failed whose process has not
    -- exited (migration 0011).
    SELECT coalesce(jsonb_object_agg(task_type, n), '{}'::jsonb), coalesce(sum(n), 0)::integer
      FROM (SELECT task_type, count(*) AS n FROM pgbg.task
             WHERE status = 'running' OR (status = 'failed' AND finished_at IS NULL)
             GROUP BY task_type) running
$$
"""

PICK_FUNCTION = f"""
CREATE FUNCTION pgbg.task_pick(p_keys text[], p_limits jsonb[], p_procs integer[],
                               p_counts jsonb, p_total integer, p_passed uuid[],
                               p_limited_only boolean,
                               OUT id uuid, OUT lim jsonb, OUT np integer)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- The first due task, in claim order, that may start now, without locking anything;
    -- with p_limited_only, the first limited one. p_keys NULL: walk the whole queue.
    IF p_keys IS NULL THEN
        SELECT t.id, t.num_of_task_type, t.num_proc INTO id, lim, np FROM pgbg.task t
         WHERE t.status = 'queued' AND {DUE.replace('run_at', 't.run_at')}
           AND t.id <> ALL(p_passed)
           AND CASE WHEN t.num_proc = 0 AND t.num_of_task_type = '{{}}'::jsonb
                    THEN NOT p_limited_only
                    WHEN t.num_proc < 0 OR NOT pgbg.type_limits_valid(t.num_of_task_type)
                    THEN true  -- to be failed
                    ELSE pgbg.limits_allow(t.num_of_task_type, t.num_proc, p_counts, p_total)
               END
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1;
        RETURN;
    END IF;
    SELECT c.id, c.lim, c.np INTO id, lim, np FROM (
        (SELECT h.id, h.priority, h.queued_at, g.lim, g.np
           FROM unnest(p_keys, p_limits, p_procs) AS g(k, lim, np)
          CROSS JOIN LATERAL (
                SELECT t.id, t.priority, t.queued_at FROM pgbg.task t
                 WHERE t.status = 'queued' AND NOT (t.num_proc = 0 AND t.num_of_task_type = '{{}}'::jsonb)
                   AND (t.num_of_task_type::text) = g.k AND t.num_proc = g.np
                   AND {DUE.replace('run_at', 't.run_at')} AND t.id <> ALL(p_passed)
                 ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1) h
          WHERE pgbg.limits_allow(g.lim, g.np, p_counts, p_total))
        UNION ALL
        (SELECT t.id, t.priority, t.queued_at, '{{}}'::jsonb, 0 FROM pgbg.task t
          WHERE NOT p_limited_only AND t.status = 'queued'
            AND t.num_proc = 0 AND t.num_of_task_type = '{{}}'::jsonb
            AND {DUE.replace('run_at', 't.run_at')} AND t.id <> ALL(p_passed)
          ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1)
    ) c ORDER BY c.priority DESC, c.queued_at, c.id LIMIT 1;
END;
$$
"""

FAIL_MALFORMED_FUNCTION = f"""
CREATE FUNCTION pgbg.task_fail_malformed(p_key text, p_num_proc integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- The due tasks of a group whose limits no claim can read fail, each saying why.
    FOR v_id IN SELECT t.id FROM pgbg.task t
                 WHERE t.status = 'queued' AND NOT (t.num_proc = 0 AND t.num_of_task_type = '{{}}'::jsonb)
                   AND (t.num_of_task_type::text) = p_key AND t.num_proc = p_num_proc
                   AND {DUE.replace('run_at', 't.run_at')}
                 FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            UPDATE pgbg.task
               SET status = 'failed', finished_at = clock_timestamp(),
                   error = format('cannot run: malformed limits (num_proc %s, '
                                  'num_of_task_type %s)', num_proc, num_of_task_type),
                   num_proc = greatest(num_proc, 0), num_of_task_type = '{{}}'::jsonb
             WHERE id = v_id;
            PERFORM pg_notify('pgbg_done', v_id::text);
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END;
$$
"""

GROUP_INDEX = ("task_claim_group_idx",
               f"""CREATE INDEX task_claim_group_idx ON pgbg.task
                   ({GROUP_KEY}, num_proc, priority DESC, queued_at, id)
                   WHERE status = 'queued' AND NOT ({FREE})""")
FREE_INDEX = ("task_claim_free_idx",
              f"""CREATE INDEX task_claim_free_idx ON pgbg.task (priority DESC, queued_at, id)
                  WHERE status = 'queued' AND {FREE}""")
OLD_LIMITED_INDEX = """CREATE INDEX task_claim_limited_idx ON pgbg.task
                       (priority DESC, queued_at, id)
                       WHERE status = 'queued' AND (num_proc > 0 OR num_of_task_type <> '{}'::jsonb)"""

REPAIR = [
    "LOCK TABLE pgbg.task, pgbg.periodic IN ACCESS EXCLUSIVE MODE",
    f"""UPDATE pgbg.task
           SET status = 'failed', finished_at = clock_timestamp(),
               error = 'cannot run: its num_of_task_type is longer than {LIMITS_BYTES} bytes; '
                       'failed by migration 0014'
         WHERE status = 'queued' AND NOT ({LIMITS_LENGTH})""",
    f"UPDATE pgbg.task SET num_of_task_type = '{{}}'::jsonb WHERE NOT ({LIMITS_LENGTH})",
    f"""UPDATE pgbg.periodic SET enabled = false, num_of_task_type = '{{}}'::jsonb
         WHERE NOT ({LIMITS_LENGTH})""",
]


def upgrade() -> None:
    for statement in REPAIR:
        op.execute(statement)
    for table in ("task", "periodic"):
        op.execute(f"ALTER TABLE pgbg.{table} ADD CONSTRAINT {table}_num_of_task_type_length "
                   f"CHECK ({LIMITS_LENGTH})")
    op.execute(GROUP_INDEX[1])
    op.execute(FREE_INDEX[1])
    op.execute("DROP INDEX pgbg.task_claim_limited_idx")
    for function in (ALLOW_FUNCTION, COUNTS_FUNCTION, PICK_FUNCTION, FAIL_MALFORMED_FUNCTION):
        op.execute(function)
    op.execute(CLAIM_FUNCTION)  # CREATE OR REPLACE resets the function's settings:
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET lock_timeout = '5s'")


def downgrade() -> None:
    op.execute(definition("0011_error_exit_holds_its_slot.py", "CLAIM_FUNCTION"))
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET lock_timeout = '5s'")
    op.execute("DROP FUNCTION pgbg.task_fail_malformed(text, integer)")
    op.execute("DROP FUNCTION pgbg.task_pick(text[], jsonb[], integer[], jsonb, integer, "
               "uuid[], boolean)")
    op.execute("DROP FUNCTION pgbg.task_running_counts()")
    op.execute("DROP FUNCTION pgbg.limits_allow(jsonb, integer, jsonb, integer)")
    op.execute(OLD_LIMITED_INDEX)
    op.execute("DROP INDEX pgbg.task_claim_free_idx")
    op.execute("DROP INDEX pgbg.task_claim_group_idx")
    for table in ("periodic", "task"):
        op.execute(f"ALTER TABLE pgbg.{table} DROP CONSTRAINT {table}_num_of_task_type_length")
