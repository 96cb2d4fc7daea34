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

# Every statement below names the task table ``t``; the indexes name no table.
FREE = "t.num_proc = 0 AND t.num_of_task_type = '{}'::jsonb"  # no limits
LIMITED = f"({FREE}) IS NOT TRUE"  # a NULL (the constraints dropped) counts as limits
# A group's key: never NULL, so that the skip scan's row comparison steps over every
# group; NULL limits ('null') and a NULL num_proc (-1) are malformed groups, failed.
GROUP_KEY = "coalesce(t.num_of_task_type::text, 'null')"
GROUP_PROCS = "coalesce(t.num_proc, -1)"
DUE = "(t.run_at IS NULL OR t.run_at <= now())"
LIMITS_LENGTH = f"octet_length(num_of_task_type::text) <= {LIMITS_BYTES}"
# what a claim sets: the task runs, this attempt is this worker's, nothing of the last
CLAIMED = """status = 'running', started_at = clock_timestamp(), finished_at = NULL,
           worker_id = p_worker_id, hostname = p_hostname, attempt = t.attempt + 1,
           pid = NULL, exit_code = NULL, signal = NULL, error = NULL, result = NULL,
           cancel_requested_at = NULL, cancel_requested_by = NULL"""

# after a task is claimed (plpgsql): return it, count it as running, stop when enough
TAKEN = """RETURN NEXT v_task;
        v_total := v_total + 1;
        v_counts := jsonb_set(v_counts, ARRAY[v_task.task_type], to_jsonb(
            coalesce((v_counts ->> v_task.task_type)::integer, 0) + 1));
        v_claimed := v_claimed + 1;
        EXIT WHEN v_claimed >= p_max;"""


def _claim_one(task_id: str) -> str:
    """Claim (plpgsql) the task whose id is in ``task_id``, into ``v_task``, if it is still
    queued and due and no other transaction holds it: FOUND says whether it was."""
    return f"""UPDATE pgbg.task t SET {CLAIMED}
         WHERE t.id = (SELECT id FROM pgbg.task
                        WHERE id = {task_id} AND status = 'queued'
                          AND (run_at IS NULL OR run_at <= now())
                        FOR UPDATE SKIP LOCKED)
        RETURNING * INTO v_task;"""


def _bare(expression: str) -> str:
    """An expression of the statements above as an index names it: without ``t.``."""
    return expression.replace("t.", "")


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

# The first due task of a group, or the first due unlimited one, in claim order: one
# probe of task_claim_group_idx or task_claim_free_idx. Unlocked, unless p_lock: then the
# first that no other transaction has locked, locked (after a pick was found locked).
HEAD_FUNCTIONS = [f"""
CREATE FUNCTION pgbg.task_group_head(p_key text, p_num_proc integer, p_lock boolean,
                                     OUT id uuid, OUT priority integer,
                                     OUT queued_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_lock THEN
        SELECT t.id, t.priority, t.queued_at INTO id, priority, queued_at FROM pgbg.task t
         WHERE t.status = 'queued' AND {LIMITED} AND {GROUP_KEY} = p_key
           AND {GROUP_PROCS} = p_num_proc AND {DUE}
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    ELSE
        SELECT t.id, t.priority, t.queued_at INTO id, priority, queued_at FROM pgbg.task t
         WHERE t.status = 'queued' AND {LIMITED} AND {GROUP_KEY} = p_key
           AND {GROUP_PROCS} = p_num_proc AND {DUE}
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1;
    END IF;
END;
$$
""", f"""
CREATE FUNCTION pgbg.task_free_head(p_lock boolean, OUT id uuid, OUT priority integer,
                                    OUT queued_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_lock THEN
        SELECT t.id, t.priority, t.queued_at INTO id, priority, queued_at FROM pgbg.task t
         WHERE t.status = 'queued' AND {FREE} AND {DUE}
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    ELSE
        SELECT t.id, t.priority, t.queued_at INTO id, priority, queued_at FROM pgbg.task t
         WHERE t.status = 'queued' AND {FREE} AND {DUE}
         ORDER BY t.priority DESC, t.queued_at, t.id LIMIT 1;
    END IF;
END;
$$
"""]

FAIL_MALFORMED_FUNCTION = f"""
CREATE FUNCTION pgbg.task_fail_malformed(p_key text, p_num_proc integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- The due tasks of a group whose limits no claim can read fail, each saying why; one
    -- that cannot even be written is passed over.
    FOR v_id IN SELECT t.id FROM pgbg.task t
                 WHERE t.status = 'queued' AND {LIMITED} AND {GROUP_KEY} = p_key
                   AND {GROUP_PROCS} = p_num_proc AND {DUE}
                 FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            UPDATE pgbg.task
               SET status = 'failed', finished_at = clock_timestamp(),
                   error = format('cannot run: malformed limits (num_proc %s, '
                                  'num_of_task_type %s)', num_proc, num_of_task_type),
                   num_proc = greatest(coalesce(num_proc, 0), 0),
                   num_of_task_type = '{{}}'::jsonb
             WHERE id = v_id;
            PERFORM pg_notify('pgbg_done', v_id::text);
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END;
$$
"""

WALK_FUNCTION = f"""
CREATE FUNCTION pgbg.task_claim_walk(p_worker_id uuid, p_hostname text, p_max integer)
RETURNS SETOF pgbg.task
LANGUAGE plpgsql AS $$
DECLARE
    v_limited CURSOR FOR
        SELECT t.id, t.priority, t.queued_at, t.num_of_task_type AS lim, t.num_proc AS np,
               {GROUP_KEY} AS k, {GROUP_PROCS} AS kp
          FROM pgbg.task t
         WHERE t.status = 'queued' AND {LIMITED} AND {DUE}
         ORDER BY t.priority DESC, t.queued_at, t.id;
    v_row record;
    v_more boolean;  -- v_row holds the next limited task
    v_free record;
    v_free_locking boolean := false;
    v_id uuid;
    v_taken boolean;
    v_task pgbg.task;
    v_counts jsonb;
    v_total integer;
    v_claimed integer := 0;
BEGIN
    -- More groups than are worth probing one by one (a limit per customer, say): walk the
    -- limited tasks in claim order once, as the claim of 0011 walked the queue, reading
    -- what it passes over instead of locking it, merged with the unlimited ones; lock only
    -- the row taken (one another transaction has locked is passed over).
    PERFORM pg_advisory_xact_lock({ADVISORY_LOCK});
    SELECT c.counts, c.total INTO v_counts, v_total FROM pgbg.task_running_counts() c;
    OPEN v_limited;
    FETCH v_limited INTO v_row;
    v_more := FOUND;
    SELECT * INTO v_free FROM pgbg.task_free_head(false);
    LOOP
        IF v_more AND (v_free.id IS NULL OR v_row.priority > v_free.priority
                OR (v_row.priority = v_free.priority
                    AND (v_row.queued_at, v_row.id) < (v_free.queued_at, v_free.id))) THEN
            v_id := v_row.id;
            IF v_row.np IS NULL OR v_row.np < 0 OR NOT pgbg.type_limits_valid(v_row.lim) THEN
                PERFORM pgbg.task_fail_malformed(v_row.k, v_row.kp);
                v_id := NULL;
            ELSIF NOT pgbg.limits_allow(v_row.lim, v_row.np, v_counts, v_total) THEN
                v_id := NULL;
            END IF;
            FETCH v_limited INTO v_row;
            v_more := FOUND;
            CONTINUE WHEN v_id IS NULL;
        ELSIF v_free.id IS NOT NULL THEN
            v_id := v_free.id;
        ELSE
            EXIT;
        END IF;
        {_claim_one('v_id')}
        v_taken := FOUND;  -- else locked by another transaction, or no longer queued
        IF v_id = v_free.id THEN
            v_free_locking := v_free_locking OR NOT v_taken;
            SELECT * INTO v_free FROM pgbg.task_free_head(v_free_locking);
        END IF;
        CONTINUE WHEN NOT v_taken;
        {TAKEN}
    END LOOP;
END;
$$
"""

CLAIM_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pgbg.task_claim(p_worker_id uuid, p_hostname text, p_max integer)
RETURNS SETOF pgbg.task
LANGUAGE plpgsql AS $$
DECLARE
    -- the groups of queued limited tasks, side by side; NULL when there are more than
    -- {MAX_GROUPS}: the claim then walks the queue in claim order
    v_keys text[];
    v_limits jsonb[];
    v_procs integer[];
    v_usable boolean[];  -- false: malformed limits, never probed
    -- each group's first due task; NULL for a group not probed (blocked) or empty
    v_ids uuid[];
    v_prios integer[];
    v_ats timestamptz[];
    v_locking boolean[];  -- probe this group locking (a pick of it was found locked)
    v_free record;  -- the first due unlimited task
    v_free_locking boolean := false;
    v_head record;
    v_counts jsonb;
    v_total integer;
    v_best integer;  -- the group whose first task goes first; 0: the unlimited one
    v_best_prio integer;
    v_best_at timestamptz;
    v_best_id uuid;
    v_task pgbg.task;
    v_claimed integer := 0;
    v_ready boolean := false;
BEGIN
    IF p_max <= 0 THEN
        RETURN;
    END IF;

    WITH RECURSIVE grp(k, kp, lim, n) AS (
        (SELECT {GROUP_KEY}, {GROUP_PROCS}, t.num_of_task_type, 1 FROM pgbg.task t
          WHERE t.status = 'queued' AND {LIMITED}
          ORDER BY {GROUP_KEY}, {GROUP_PROCS} LIMIT 1)
        UNION ALL
        SELECT nxt.k, nxt.kp, nxt.lim, grp.n + 1 FROM grp CROSS JOIN LATERAL (
            SELECT {GROUP_KEY} AS k, {GROUP_PROCS} AS kp, t.num_of_task_type AS lim
              FROM pgbg.task t
             WHERE t.status = 'queued' AND {LIMITED}
               AND ({GROUP_KEY}, {GROUP_PROCS}) > (grp.k, grp.kp)
             ORDER BY {GROUP_KEY}, {GROUP_PROCS} LIMIT 1) nxt
         WHERE grp.n <= {MAX_GROUPS}
    )
    SELECT CASE WHEN count(*) <= {MAX_GROUPS} THEN coalesce(array_agg(k), '{{}}') END,
           array_agg(lim), array_agg(kp)
      INTO v_keys, v_limits, v_procs FROM grp;

    IF v_keys IS NULL THEN
        RETURN QUERY SELECT * FROM pgbg.task_claim_walk(p_worker_id, p_hostname, p_max);
        RETURN;
    END IF;

    FOR i IN 1 .. cardinality(v_keys) LOOP
        -- Limits no claim can read (a row that slipped past the constraints): those tasks
        -- fail alone.
        v_usable[i] := v_procs[i] >= 0 AND pgbg.type_limits_valid(v_limits[i]);
        IF NOT v_usable[i] THEN
            PERFORM pgbg.task_fail_malformed(v_keys[i], v_procs[i]);
        END IF;
    END LOOP;
    IF cardinality(v_keys) > 0 THEN
        -- Can a limited task start? Probe the groups the counts allow until one has a due
        -- task. No lock yet: what runs may change, so it is all done again under the lock.
        SELECT c.counts, c.total INTO v_counts, v_total FROM pgbg.task_running_counts() c;
        FOR i IN 1 .. cardinality(v_keys) LOOP
            CONTINUE WHEN NOT v_usable[i]
                OR NOT pgbg.limits_allow(v_limits[i], v_procs[i], v_counts, v_total);
            SELECT * INTO v_head FROM pgbg.task_group_head(v_keys[i], v_procs[i], false);
            v_ready := v_head.id IS NOT NULL;
            EXIT WHEN v_ready;
        END LOOP;
    END IF;

    IF NOT v_ready THEN
        -- No limited task can start: unlimited ones only, side by side with other claims.
        -- A limited task allowed since the check above is left for the next step.
        PERFORM pg_advisory_xact_lock_shared({ADVISORY_LOCK});
        RETURN QUERY
        UPDATE pgbg.task t SET {CLAIMED}
         WHERE t.id = ANY(ARRAY(SELECT t.id FROM pgbg.task t
                                 WHERE t.status = 'queued' AND {FREE} AND {DUE}
                                 ORDER BY t.priority DESC, t.queued_at, t.id
                                 LIMIT p_max
                                 FOR UPDATE SKIP LOCKED))
        RETURNING t.*;
        RETURN;
    END IF;

    -- A limited task can start: under the exclusive lock, count again, then merge the
    -- groups' first tasks and the first unlimited one in claim order, a task at a time,
    -- probing again only the stream a task was taken from.
    PERFORM pg_advisory_xact_lock({ADVISORY_LOCK});
    SELECT c.counts, c.total INTO v_counts, v_total FROM pgbg.task_running_counts() c;
    FOR i IN 1 .. cardinality(v_keys) LOOP
        v_locking[i] := false;
        IF v_usable[i] AND pgbg.limits_allow(v_limits[i], v_procs[i], v_counts, v_total) THEN
            SELECT * INTO v_head FROM pgbg.task_group_head(v_keys[i], v_procs[i], false);
            v_ids[i] := v_head.id;
            v_prios[i] := v_head.priority;
            v_ats[i] := v_head.queued_at;
        END IF;
    END LOOP;
    SELECT * INTO v_free FROM pgbg.task_free_head(false);
    LOOP
        v_best := NULL;
        IF v_free.id IS NOT NULL THEN
            v_best := 0;
            v_best_prio := v_free.priority;
            v_best_at := v_free.queued_at;
            v_best_id := v_free.id;
        END IF;
        FOR i IN 1 .. cardinality(v_keys) LOOP
            CONTINUE WHEN v_ids[i] IS NULL
                OR NOT pgbg.limits_allow(v_limits[i], v_procs[i], v_counts, v_total);
            IF v_best IS NULL OR v_prios[i] > v_best_prio OR (
                    v_prios[i] = v_best_prio AND (v_ats[i], v_ids[i]) < (v_best_at, v_best_id))
            THEN
                v_best := i;
                v_best_prio := v_prios[i];
                v_best_at := v_ats[i];
                v_best_id := v_ids[i];
            END IF;
        END LOOP;
        EXIT WHEN v_best IS NULL;

        {_claim_one('v_best_id')}
        IF FOUND THEN
            {TAKEN}
        ELSIF v_best = 0 THEN  -- locked by another transaction, or gone: from now on
            v_free_locking := true;  -- this stream is probed skipping (and taking) locks
        ELSE
            v_locking[v_best] := true;
        END IF;
        IF v_best = 0 THEN
            SELECT * INTO v_free FROM pgbg.task_free_head(v_free_locking);
        ELSE
            SELECT * INTO v_head
              FROM pgbg.task_group_head(v_keys[v_best], v_procs[v_best], v_locking[v_best]);
            v_ids[v_best] := v_head.id;
            v_prios[v_best] := v_head.priority;
            v_ats[v_best] := v_head.queued_at;
        END IF;
    END LOOP;
END;
$$
"""

# claim order among the limited tasks, for the walk (the index of all queued tasks, 0001's
# task_claim_idx, is gone: with statistics from an emptier queue the planner chose it for
# the unlimited stream and walked the limited tasks queued ahead)
LIMITED_INDEX = f"""CREATE INDEX task_claim_limited_idx ON pgbg.task
                    (priority DESC, queued_at, id) WHERE status = 'queued' AND {_bare(LIMITED)}"""
GROUP_INDEX = f"""CREATE INDEX task_claim_group_idx ON pgbg.task
                  (({_bare(GROUP_KEY)}), ({_bare(GROUP_PROCS)}), priority DESC, queued_at, id)
                  WHERE status = 'queued' AND {_bare(LIMITED)}"""
FREE_INDEX = f"""CREATE INDEX task_claim_free_idx ON pgbg.task (priority DESC, queued_at, id)
                 WHERE status = 'queued' AND {_bare(FREE)}"""
OLD_LIMITED_INDEX = """CREATE INDEX task_claim_limited_idx ON pgbg.task
                       (priority DESC, queued_at, id)
                       WHERE status = 'queued' AND (num_proc > 0 OR num_of_task_type <> '{}'::jsonb)"""

# The bound holds where the index does (queued rows) and where a periodic task queues
# from (enabled ones): a finished task or a disabled periodic one keeps its limits, so
# an operator who queues it again is told it cannot be, instead of it running unlimited.
TASK_CHECK = f"status <> 'queued' OR {LIMITS_LENGTH}"
PERIODIC_CHECK = f"NOT enabled OR {LIMITS_LENGTH}"
REPAIR = [
    "LOCK TABLE pgbg.task, pgbg.periodic IN ACCESS EXCLUSIVE MODE",
    f"""UPDATE pgbg.task
           SET status = 'failed', finished_at = clock_timestamp(),
               error = 'cannot run: its num_of_task_type is longer than {LIMITS_BYTES} bytes; '
                       'failed by migration 0014'
         WHERE NOT ({TASK_CHECK})""",
    f"UPDATE pgbg.periodic SET enabled = false WHERE NOT ({PERIODIC_CHECK})",
]


def upgrade() -> None:
    for statement in REPAIR:
        op.execute(statement)
    op.execute(f"ALTER TABLE pgbg.task ADD CONSTRAINT task_num_of_task_type_length "
               f"CHECK ({TASK_CHECK})")
    op.execute(f"ALTER TABLE pgbg.periodic ADD CONSTRAINT periodic_num_of_task_type_length "
               f"CHECK ({PERIODIC_CHECK})")
    op.execute("DROP INDEX pgbg.task_claim_limited_idx")
    op.execute("DROP INDEX pgbg.task_claim_idx")
    op.execute(LIMITED_INDEX)
    op.execute(GROUP_INDEX)
    op.execute(FREE_INDEX)
    for function in (ALLOW_FUNCTION, COUNTS_FUNCTION, *HEAD_FUNCTIONS, FAIL_MALFORMED_FUNCTION,
                     WALK_FUNCTION, CLAIM_FUNCTION):
        op.execute(function)
    # CREATE OR REPLACE resets the claim's settings (0009, 0012); the functions it calls
    # run under them
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET lock_timeout = '5s'")
    # Every statement of the claim has an index that gives it its order; statistics from
    # an emptier queue (a burst arrives faster than autoanalyze) must not make a sort or a
    # sequential scan look cheaper: the claim's plans are cached for the session.
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET enable_sort = off")
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET enable_seqscan = off")


def downgrade() -> None:
    op.execute(definition("0011_error_exit_holds_its_slot.py", "CLAIM_FUNCTION"))
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET lock_timeout = '5s'")
    for function in ("task_claim_walk(uuid, text, integer)",
                     "task_fail_malformed(text, integer)",
                     "task_free_head(boolean)", "task_group_head(text, integer, boolean)",
                     "task_running_counts()", "limits_allow(jsonb, integer, jsonb, integer)"):
        op.execute(f"DROP FUNCTION pgbg.{function}")
    op.execute("DROP INDEX pgbg.task_claim_limited_idx")
    op.execute(OLD_LIMITED_INDEX)
    op.execute("CREATE INDEX task_claim_idx ON pgbg.task (priority DESC, queued_at, id) "
               "WHERE status = 'queued'")
    op.execute("DROP INDEX pgbg.task_claim_free_idx")
    op.execute("DROP INDEX pgbg.task_claim_group_idx")
    op.execute("ALTER TABLE pgbg.periodic DROP CONSTRAINT periodic_num_of_task_type_length")
    op.execute("ALTER TABLE pgbg.task DROP CONSTRAINT task_num_of_task_type_length")
