"""``pgbg top``: a live view of workers, running tasks, queue depth and recent failures.

It redraws when a task is queued or finishes (LISTEN), at most a few times a second, and
at least every ``--refresh`` seconds.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Any

import typer

from pgbg import admin, db, notify, queries
from pgbg.cli.common import ago, app, command, seconds_text, table

MIN_REDRAW = 0.25  # seconds between redraws, however busy the queue


def frame() -> Any:
    """One screen of the live view, read fresh from the database."""
    from rich.console import Group

    workers = admin.list_workers()
    running = admin.list_tasks(["running"], None, None, 20)
    failures = admin.list_tasks(["failed", "terminated"], None, timedelta(hours=1), 5)
    with db.shared_connection() as conn:
        depth = queries.task_count_queued(conn)
    return Group(
        table(f"workers ({len(workers)})", ["host", "pid", "concurrency", "running", "heartbeat"],
              [[w.hostname, w.pid, w.concurrency, w.running, seconds_text(w.heartbeat_age)]
               for w in workers]),
        table(f"running ({len(running)} shown)", ["id", "type", "host", "pid", "elapsed"],
              [[str(t.id)[:8], t.task_type, t.hostname, t.pid,
                ago(t.started_at).removesuffix(" ago")] for t in running]),
        table(f"queued ({sum(depth.values())})", ["type", "waiting"],
              [[task_type, count] for task_type, count in depth.items()]),
        table("failures in the last hour", ["id", "type", "status", "error"],
              [[str(t.id)[:8], t.task_type, t.status.value,
                (t.error or "").strip().splitlines()[-1][:70] if t.error else ""]
               for t in failures]),
    )


@app.command()
@command
def top(
    once: Annotated[bool, typer.Option(help="Print one frame and exit.")] = False,
    duration: Annotated[float | None, typer.Option(help="Exit after this many seconds.")] = None,
    refresh: Annotated[float, typer.Option(help="Redraw at least every N seconds.")] = 2.0,
) -> None:
    """A live view of the queue; Ctrl-C quits.

    Example: pgbg top --refresh 1
    """
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(frame())
        return
    stop_at = None if duration is None else time.monotonic() + duration
    with db.connect(application_name="pgbg top") as listener:
        if db.listen_enabled():
            notify.listen(listener, notify.QUEUED, notify.DONE)
        try:
            with Live(frame(), console=console, auto_refresh=False) as live:
                while stop_at is None or time.monotonic() < stop_at:
                    wait = refresh if stop_at is None else min(refresh,
                                                               stop_at - time.monotonic())
                    for _ in listener.notifies(timeout=max(wait, 0), stop_after=1):
                        pass
                    time.sleep(MIN_REDRAW)  # coalesce a burst of notifications into one redraw
                    notify.drain(listener)
                    live.update(frame(), refresh=True)
        except KeyboardInterrupt:
            pass
