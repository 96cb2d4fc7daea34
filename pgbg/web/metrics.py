"""``/metrics``: the queue in the Prometheus text format, read from the database.

Everything is derived from the tables at scrape time, so every dashboard replica reports
the same numbers and nothing is lost when one restarts. What happened (claims, outcomes,
wait and run times) is reported over a sliding window (``WINDOW``, the last hour) of
finished tasks, as gauges and a histogram of that window: read them as they are
(``histogram_quantile(0.95, pgbg_task_wait_seconds_bucket)``), not through ``rate()``.
A counter would need to be monotonic, and rows deleted by ``pgbg purge`` would make any
count over the table go down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pgbg.web.data import BUCKETS

WINDOW = 3600.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, dict[str, object], float | int]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {_number(value)}")


def _histogram(rows: list[list[Any]], hist: int, total: int
               ) -> Iterable[tuple[str, dict[str, object], float | int]]:
    """Per type: the window's cumulative buckets, summed over the statuses."""
    by_type: dict[str, tuple[list[int], float]] = {}
    for row in rows:
        counts, seconds = by_type.get(row[0], ([0] * (len(BUCKETS) + 1), 0.0))
        by_type[row[0]] = ([a + int(b) for a, b in zip(counts, row[hist], strict=True)],
                           seconds + float(row[total]))
    for task_type, (counts, seconds) in sorted(by_type.items()):
        for bound, count in zip([*(repr(float(b)) for b in BUCKETS), "+Inf"], counts,
                                strict=True):
            yield "_bucket", {"task_type": task_type, "le": bound}, count
        yield "_count", {"task_type": task_type}, counts[-1]
        yield "_sum", {"task_type": task_type}, seconds


def render(readings: dict[str, Any], window: float = WINDOW) -> str:
    out = _Out()
    out.family("pgbg_up", "gauge", "1: the database answered this scrape.", [("", {}, 1)])
    out.family("pgbg_metrics_window_seconds", "gauge",
               "The window the *_recent metrics and the histograms cover (seconds).",
               [("", {}, window)])
    out.family("pgbg_tasks", "gauge",
               "Tasks not finished, by status and type (failed: recorded its failure, its "
               "process still exiting).",
               [("", {"status": s, "task_type": t}, int(n))
                for t, s, n in sorted(readings["live"])])
    out.family("pgbg_queue_depth", "gauge", "Queued tasks that are due, by type.",
               [("", {"task_type": t}, int(n)) for t, n, _age in sorted(readings["queue"])])
    out.family("pgbg_queue_oldest_waiting_seconds", "gauge",
               "How long the oldest due queued task of each type has waited.",
               [("", {"task_type": t}, float(age or 0.0))
                for t, _n, age in sorted(readings["queue"])])
    finished = readings["finished"]
    out.family("pgbg_tasks_finished_recent", "gauge",
               "Tasks that finished in the window, by outcome and type.",
               [("", {"status": row[1], "task_type": row[0]}, int(row[2]))
                for row in sorted(finished, key=lambda r: (r[0], r[1]))])
    claimed: dict[str, int] = {}
    for row in finished:
        claimed[row[0]] = claimed.get(row[0], 0) + int(row[3])
    out.family("pgbg_tasks_claimed_recent", "gauge",
               "Tasks that finished in the window after a worker claimed and started them, "
               "by type.", [("", {"task_type": t}, n) for t, n in sorted(claimed.items())])
    out.family("pgbg_task_wait_seconds", "histogram",
               "Queued to started, of the tasks that finished in the window.",
               _histogram(finished, 4, 5))
    out.family("pgbg_task_run_seconds", "histogram",
               "Started to finished, of the tasks that finished in the window.",
               _histogram(finished, 6, 7))
    workers = readings["workers"]
    out.family("pgbg_workers", "gauge", "Registered workers (live: heartbeat within the lease).",
               [("", {"state": "live"}, sum(1 for w in workers if not w[6])),
                ("", {"state": "lapsed"}, sum(1 for w in workers if w[6]))])
    labels = [{"worker_id": w[0], "hostname": w[1], "pid": w[2]} for w in workers]
    out.family("pgbg_worker_slots", "gauge", "Each worker's concurrency (task slots).",
               [("", lab, int(w[3])) for lab, w in zip(labels, workers, strict=True)])
    out.family("pgbg_worker_busy_slots", "gauge", "Each worker's running tasks.",
               [("", lab, int(w[4])) for lab, w in zip(labels, workers, strict=True)])
    out.family("pgbg_worker_heartbeat_age_seconds", "gauge",
               "Seconds since each worker's last heartbeat (database clock).",
               [("", lab, float(w[5])) for lab, w in zip(labels, workers, strict=True)])
    out.family("pgbg_periodic_enabled", "gauge", "Enabled periodic tasks.",
               [("", {}, int(readings["periodic_enabled"] or 0))])
    return "\n".join(out.lines) + "\n"


def render_down() -> str:
    return ("# HELP pgbg_up 1: the database answered this scrape.\n# TYPE pgbg_up gauge\n"
            "pgbg_up 0\n")
