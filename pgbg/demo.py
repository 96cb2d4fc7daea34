"""``pgbg demo``: the main job, end to end, for a newcomer.

Migrates, starts a real worker process, queues tasks of two types with priorities and
limits, shows progress live, and prints a summary read back from the task rows. It stops
everything it started: the worker, and the embedded server if the demo started it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pgbg
from pgbg import db, embedded, migrate, notify, queries

THUMBNAIL_LIMIT = 3  # thumbnails running at once
REPORT_LIMIT = 1  # reports running at once


# -- the demo's tasks (module-level functions, imported by the worker by name) --------

def make_thumbnail(image_id: int, size: int) -> dict[str, int]:
    """Pretend to resize an image; every 13th one is corrupt."""
    pgbg.record_task_info(f"resizing image {image_id} to {size}px")
    time.sleep(random.uniform(0.05, 0.25))  # the work itself
    if image_id % 13 == 0:
        raise ValueError(f"image {image_id} is corrupt")
    return {"image_id": image_id, "size": size}


def build_report(report_id: int) -> dict[str, int]:
    """Pretend to build a report, linked to the object it is about."""
    pgbg.record_task_related("report", report_id)
    time.sleep(0.3)  # the work itself
    return {"report_id": report_id, "pages": 3 + report_id % 5}


# -- the demo ------------------------------------------------------------------------

def run(tasks: int = 36, concurrency: int = 4, keep_db: bool = False) -> int:
    from rich.console import Console

    console = Console()
    started_server = False
    if db.url_source() == "embedded":
        with console.status("starting the embedded PostgreSQL server…"):
            _server, started_server = embedded.ensure_running()
    url = db.database_url()
    console.print(f"database: [bold]{db.mask_url(url)}[/] ({db.url_source()})")
    worker: subprocess.Popen[bytes] | None = None
    try:
        migrate.upgrade(url)
        worker = subprocess.Popen(
            [sys.executable, "-m", "pgbg", "worker", "--concurrency", str(concurrency),
             "--log-level", "warning", "--shutdown-timeout", "10"],
            env={**os.environ, "PGBG_DATABASE_URL": url}, stdin=subprocess.DEVNULL)
        console.print(f"worker: pid {worker.pid}, concurrency {concurrency}")
        ids = _enqueue(tasks)
        console.print(f"queued {len(ids)} tasks: thumbnails (at most {THUMBNAIL_LIMIT} at once) "
                      f"and reports (priority 5, at most {REPORT_LIMIT} at once)")
        if not _follow(ids, worker, console):
            return 1
        _summarise(ids, console)
        return 0
    finally:
        if worker is not None:
            _stop(worker)
        if started_server and not keep_db:
            embedded.stop()
            console.print("stopped the embedded server the demo started "
                          "(pgbg db start keeps one running)")


def _enqueue(count: int) -> list[uuid.UUID]:
    reports = max(2, count // 4)
    ids = []
    for i in range(1, count - reports + 1):
        r = pgbg.run_in_background_with_limits(make_thumbnail, "thumbnail", 0,
                                               {"thumbnail": THUMBNAIL_LIMIT}, i, 256)
        ids.append(r.id)
    for i in range(1, reports + 1):
        r = pgbg.run_in_background_with_limits(build_report, "report", 0,
                                               {"report": REPORT_LIMIT}, i, priority=5)
        ids.append(r.id)
    return ids


def _follow(ids: list[uuid.UUID], worker: subprocess.Popen[bytes], console: object) -> bool:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with db.connect() as conn, Progress("[progress.description]{task.description}",
                                        BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                        console=console) as progress:  # type: ignore[arg-type]
        notify.listen(conn, notify.DONE)
        bar = progress.add_task("running", total=len(ids))
        deadline = time.monotonic() + 300
        while True:
            done = queries.task_count_terminal(conn, ids)
            progress.update(bar, completed=done)
            if done == len(ids):
                return True
            if worker.poll() is not None or time.monotonic() > deadline:
                progress.stop()
                print(f"error: the worker stopped (exit code {worker.returncode}) "
                      f"with {len(ids) - done} tasks unfinished", file=sys.stderr)
                return False
            for _ in conn.notifies(timeout=1.0, stop_after=1):
                pass


def _summarise(ids: list[uuid.UUID], console: object) -> None:
    from rich.table import Table

    with db.connect() as conn:
        summary = queries.task_summary(conn, ids)
        peaks = queries.task_max_overlap(conn, ids)
        failed = queries.task_list_failed(conn, ids)
    limits = {"thumbnail": THUMBNAIL_LIMIT, "report": REPORT_LIMIT}
    table = Table(title="pgbg demo: what the task rows say")
    for column in ("type", "tasks", "succeeded", "failed", "max running at once", "limit"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for task_type, counts in sorted(summary.items()):
        table.add_row(task_type, str(sum(counts.values())), str(counts.get("succeeded", 0)),
                      str(counts.get("failed", 0)), str(peaks.get(task_type, 0)),
                      str(limits.get(task_type, "-")))
    console.print(table)  # type: ignore[attr-defined]
    if failed:
        errors = Table(title="failures (on purpose: every 13th image is corrupt)")
        for column in ("task", "type", "status", "error"):
            errors.add_column(column)
        for task_id, task_type, status, error in failed:
            last = [line for line in error.strip().splitlines() if line.strip()]
            errors.add_row(str(task_id)[:8], task_type, status, last[-1] if last else "")
        console.print(errors)  # type: ignore[attr-defined]
    console.print("every task is a row: try  psql … -c 'SELECT * FROM pgbg.task_type_stats'")  # type: ignore[attr-defined]


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
