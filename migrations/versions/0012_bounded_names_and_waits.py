"""Names that fit their indexes, times every reader can read, and bounded lock waits.

- ``task_type`` (at most 255 bytes) and ``unique_key`` (1024) are indexed: a longer one
  failed inside an index insert — at enqueue, or at the claim that indexes a running task
  — so one row could stop every claim. ``run_at`` is finite and within years 1 to 9999:
  ``-infinity`` or a year BC, put there by SQL, could not be read by the worker that
  claimed it. CHECK constraints say so. Rows from before are repaired first, so the
  migration never fails on old data: a queued row that breaks them is failed, saying
  why; a finished one loses what no longer matters (its unique_key, its run_at) and a
  task type longer than allowed is cut to 63 characters.
- The worker's step and claim wait at most 5 s for a lock (``lock_timeout`` set on the
  functions, so it holds behind a transaction-pooling PgBouncer too): a table locked for
  longer (a migration, an administrator) makes the step fail and be tried again, while
  the worker goes on renewing its lease, instead of hanging until the lease lapses.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CHECKS = {
    "task_type_length": "octet_length(task_type) <= 255",
    "unique_key_length": "unique_key IS NULL OR octet_length(unique_key) <= 1024",
    "run_at_readable": ("run_at IS NULL OR (isfinite(run_at) AND run_at >= "
                        "'0001-01-01 00:00:00+00' AND run_at < '10000-01-01 00:00:00+00')"),
}
FUNCTIONS = ("pgbg.task_claim(uuid, text, integer)",
             "pgbg.task_step(uuid, text, integer, jsonb, jsonb)")
LOCK_TIMEOUT = "5s"


def upgrade() -> None:
    op.execute("LOCK TABLE pgbg.task, pgbg.periodic IN ACCESS EXCLUSIVE MODE")
    broken = " OR ".join(f"NOT ({check})" for check in CHECKS.values())
    op.execute(f"""UPDATE pgbg.task
                      SET status = 'failed', finished_at = clock_timestamp(),
                          error = 'cannot run: its task_type, unique_key or run_at cannot '
                                  'be stored or read; failed by migration 0012'
                    WHERE status = 'queued' AND ({broken})""")
    op.execute(f"""UPDATE pgbg.task
                      SET run_at = CASE WHEN {CHECKS['run_at_readable']} THEN run_at END,
                          unique_key = CASE WHEN {CHECKS['unique_key_length']}
                                            THEN unique_key END,
                          task_type = CASE WHEN {CHECKS['task_type_length']} THEN task_type
                                           ELSE left(task_type, 63) END
                    WHERE {broken}""")
    op.execute("""UPDATE pgbg.periodic SET task_type = left(task_type, 63), enabled = false
                   WHERE octet_length(task_type) > 255""")
    for name, check in CHECKS.items():
        op.execute(f"ALTER TABLE pgbg.task ADD CONSTRAINT task_{name} CHECK ({check})")
    op.execute("""ALTER TABLE pgbg.periodic ADD CONSTRAINT periodic_task_type_length
                  CHECK (octet_length(task_type) <= 255)""")
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET lock_timeout = '{LOCK_TIMEOUT}'")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET lock_timeout")
    op.execute("ALTER TABLE pgbg.periodic DROP CONSTRAINT periodic_task_type_length")
    for name in reversed(list(CHECKS)):
        op.execute(f"ALTER TABLE pgbg.task DROP CONSTRAINT task_{name}")
