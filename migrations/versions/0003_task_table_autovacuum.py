"""Autovacuum and fill factor for the task table, tuned for a queue.

Every task is inserted, then updated at least twice (claimed, finished): a queue table
makes dead tuples several times faster than it grows, and the claim path scans the
live-state partial indexes, which bloat when vacuum lags. PostgreSQL's defaults (vacuum
once 20% of the table is dead, throttled by cost delay) suit slowly changing tables, not
this one. So:

- ``autovacuum_vacuum_scale_factor = 0.02`` and ``autovacuum_vacuum_threshold = 1000``:
  vacuum after ~2% churn (plus 1000 rows), so a table with a million finished rows is
  vacuumed every ~21,000 updates rather than every ~200,000;
- ``autovacuum_analyze_scale_factor = 0.02``: the planner's idea of how many rows are
  queued changes quickly; keep its statistics fresh for the claim query;
- ``autovacuum_vacuum_cost_delay = 0``: vacuum this table at full speed (it is small per
  run at this frequency, and delaying it is what lets bloat build up);
- ``fillfactor = 80``: room on each page for the updates that can be HOT (progress
  ``info``, pid), which then need no index entries and no vacuum of indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_vacuum_cost_delay": "0",
    "fillfactor": "80",
}


def upgrade() -> None:
    options = ", ".join(f"{key} = {value}" for key, value in SETTINGS.items())
    op.execute(f"ALTER TABLE pgbg.task SET ({options})")


def downgrade() -> None:
    op.execute(f"ALTER TABLE pgbg.task RESET ({', '.join(SETTINGS)})")
