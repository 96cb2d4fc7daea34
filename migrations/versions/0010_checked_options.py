"""The options the claim reads are checked by the database; a malformed row fails alone.

A limit the claim could not read (``num_of_task_type = '[]'``, ``{"a": "x"}``, a number
past integer) made every claim of every worker fail, and the ``pgbg.queue`` view with it;
a ``retry_backoff`` of 1e308 crashed the retry arithmetic. ``enqueue`` now refuses them,
and so does the database:

- ``pgbg.type_limits_valid(jsonb)``: an object whose every value is an integer from 1 to
  2147483647 (written as one: ``2.0`` is not). CHECK constraints on ``pgbg.task`` and
  ``pgbg.periodic``: that, ``num_proc >= 0``, ``max_attempts`` 1..1000, ``retry_backoff``
  NULL or 0..3600 (``decisions.MAX_BACKOFF``), ``timeout`` NULL or finite and > 0.
- Rows from before are repaired first, so the constraints hold and the migration never
  fails on old data: a queued task with malformed limits could never run, so it is failed,
  its error saying what it held; other rows lose the malformed limits ('{}'), a negative
  ``num_proc`` becomes 0, ``max_attempts`` and ``retry_backoff`` are brought into range
  (NaN: NULL, the worker's default), a timeout that is not a positive finite number is
  NULL; a periodic task with malformed limits is also disabled. The tables are locked for
  the few statements this takes, so no old-code insert slips in between.
- The claim fails a queued row whose limits it cannot read (one that slipped in with the
  constraints dropped), and the view shows it as blocked by them, instead of erroring.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from alembic import op

from pgbg.migrations.versions import definition

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VALID_FUNCTION = """
CREATE FUNCTION pgbg.type_limits_valid(p_limits jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(p_limits) IS DISTINCT FROM 'object' THEN false
                ELSE NOT EXISTS (
                    SELECT 1 FROM jsonb_each(p_limits) AS l(key, value)
                     WHERE CASE WHEN jsonb_typeof(l.value) = 'number'
                                 AND l.value::text ~ '^[1-9][0-9]{0,9}$'
                                THEN l.value::text::bigint > 2147483647
                                ELSE true END)
           END
$$
"""

MALFORMED = "(num_proc < 0 OR NOT pgbg.type_limits_valid(num_of_task_type))"

CHECKS = {
    "num_of_task_type_valid": "pgbg.type_limits_valid(num_of_task_type)",
    "num_proc_valid": "num_proc >= 0",
    "max_attempts_valid": "max_attempts >= 1 AND max_attempts <= 1000",
    "retry_backoff_valid": "retry_backoff IS NULL OR (retry_backoff >= 0 AND retry_backoff <= 3600)",
    "timeout_valid": "timeout IS NULL OR (timeout > 0 AND timeout < 'Infinity'::float8)",
}

REPAIR = [
    "LOCK TABLE pgbg.task, pgbg.periodic IN ACCESS EXCLUSIVE MODE",
    f"""UPDATE pgbg.task
           SET status = 'failed', finished_at = clock_timestamp(),
               error = format('cannot run: malformed limits (num_proc %s, num_of_task_type %s); '
                              'failed by migration 0010', num_proc, num_of_task_type),
               num_proc = greatest(num_proc, 0), num_of_task_type = '{{}}'::jsonb
         WHERE status = 'queued' AND {MALFORMED}""",
    f"""UPDATE pgbg.periodic SET enabled = false WHERE {MALFORMED}""",
]
for _table in ("task", "periodic"):
    REPAIR += [
        f"""UPDATE pgbg.{_table}
               SET num_proc = greatest(num_proc, 0),
                   num_of_task_type = CASE WHEN pgbg.type_limits_valid(num_of_task_type)
                                           THEN num_of_task_type ELSE '{{}}'::jsonb END
             WHERE {MALFORMED}""",
        f"""UPDATE pgbg.{_table} SET max_attempts = least(greatest(max_attempts, 1), 1000)
             WHERE NOT ({CHECKS['max_attempts_valid']})""",
        f"""UPDATE pgbg.{_table}
               SET retry_backoff = CASE WHEN retry_backoff = 'NaN'::float8 THEN NULL
                                        ELSE least(greatest(retry_backoff, 0), 3600) END
             WHERE NOT ({CHECKS['retry_backoff_valid']})""",
        f"""UPDATE pgbg.{_table} SET timeout = NULL WHERE NOT ({CHECKS['timeout_valid']})""",
    ]

PREVIOUS_CLAIM = definition("0009_generic_plans.py", "CLAIM_FUNCTION")
OLD_LOOP_START = """    LOOP
        -- A task its limits block is passed over; tasks behind it may still run.
"""
NEW_LOOP_START = """    LOOP
        IF v_task.num_proc < 0 OR NOT pgbg.type_limits_valid(v_task.num_of_task_type) THEN
            -- Limits no claim can read (a row that slipped past the constraints): that
            -- task fails alone; if even that cannot be written, it is passed over.
            BEGIN
                UPDATE pgbg.task
                   SET status = 'failed', finished_at = clock_timestamp(),
                       error = format('cannot run: malformed limits (num_proc %s, '
                                      'num_of_task_type %s)', num_proc, num_of_task_type),
                       num_proc = greatest(num_proc, 0), num_of_task_type = '{}'::jsonb
                 WHERE id = v_task.id;
                PERFORM pg_notify('pgbg_done', v_task.id::text);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
            CONTINUE;
        END IF;
        -- A task its limits block is passed over; tasks behind it may still run.
"""
if PREVIOUS_CLAIM.count(OLD_LOOP_START) != 1:  # revision 0009 is fixed: this never changes
    raise RuntimeError("revision 0010 cannot find the claim it rewrites")
CLAIM_FUNCTION = PREVIOUS_CLAIM.replace(OLD_LOOP_START, NEW_LOOP_START)
CLAIM_SIGNATURE = "pgbg.task_claim(uuid, text, integer)"

PREVIOUS_VIEW = definition("0005_scheduled_and_unique.py", "QUEUE_VIEW")
OLD_LIMITS = """                   || ARRAY(SELECT format('%s: %s running, limit %s', l.key, r.n, l.value)
                              FROM jsonb_each_text(t.num_of_task_type) l
                              JOIN running r ON r.task_type = l.key
                             WHERE r.n >= l.value::integer
                             ORDER BY l.key),
"""
NEW_LIMITS = """                   || CASE WHEN t.num_proc >= 0 AND pgbg.type_limits_valid(t.num_of_task_type)
                      THEN ARRAY(SELECT format('%s: %s running, limit %s', l.key, r.n, l.value)
                                   FROM jsonb_each_text(t.num_of_task_type) l
                                   JOIN running r ON r.task_type = l.key
                                  WHERE r.n >= l.value::integer
                                  ORDER BY l.key)
                      ELSE ARRAY[format('malformed limits (num_proc %s, num_of_task_type %s)',
                                        t.num_proc, t.num_of_task_type)] END,
"""
if PREVIOUS_VIEW.count(OLD_LIMITS) != 1:
    raise RuntimeError("revision 0010 cannot find the view it rewrites")
QUEUE_VIEW = PREVIOUS_VIEW.replace(OLD_LIMITS, NEW_LIMITS)


def upgrade() -> None:
    op.execute(VALID_FUNCTION)
    for statement in REPAIR:
        op.execute(statement)
    for table in ("task", "periodic"):
        for name, check in CHECKS.items():
            op.create_check_constraint(f"{table}_{name}", table, check, schema="pgbg")
    op.execute(CLAIM_FUNCTION)  # CREATE OR REPLACE resets the function's settings:
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    op.execute(QUEUE_VIEW)


def downgrade() -> None:
    op.execute(PREVIOUS_VIEW)
    op.execute(PREVIOUS_CLAIM)
    op.execute(f"ALTER FUNCTION {CLAIM_SIGNATURE} SET plan_cache_mode = force_generic_plan")
    for table in ("periodic", "task"):
        for name in reversed(list(CHECKS)):
            op.drop_constraint(f"{table}_{name}", table, type_="check", schema="pgbg")
    op.execute("DROP FUNCTION pgbg.type_limits_valid(jsonb)")
