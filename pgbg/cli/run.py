"""Commands that run things: the worker, migrations, the demo, the embedded server."""

from __future__ import annotations

import json
import os
import signal
from typing import Annotated

import typer

from pgbg import db
from pgbg.cli.common import JsonOption, LogLevel, app, command, db_app, setup_logging


@app.command()
@command
def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1,
                                             help="Tasks run at once.")] = 2,
    poll_interval: Annotated[float, typer.Option(help="Seconds between fallback polls.")] = 5.0,
    shutdown_timeout: Annotated[float, typer.Option(
        help="On SIGTERM/SIGINT, seconds to let running tasks finish before killing them.")] = 30.0,
    kill_grace: Annotated[float, typer.Option(
        help="Seconds between SIGTERM and SIGKILL when a task is terminated.")] = 5.0,
    heartbeat_interval: Annotated[float, typer.Option(
        help="Seconds between heartbeats (and checks for lost workers).")] = 5.0,
    lease: Annotated[float, typer.Option(
        help="Seconds without a heartbeat after which a worker's tasks are recovered.")] = 30.0,
    task_timeout: Annotated[float | None, typer.Option(
        help="Default time limit per task, in seconds (enqueue(timeout=) overrides).")] = None,
    retention: Annotated[str | None, typer.Option(
        help="Purge tasks finished longer ago than this (e.g. 7d), a batch per heartbeat.")
    ] = None,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="Only run functions from these module prefixes (repeatable; also "
        "PGBG_ALLOW, comma-separated). Others fail without being imported.")] = None,
    retry_backoff: Annotated[float, typer.Option(
        help="First retry delay in seconds for tasks that set none (doubled per attempt).")
    ] = 1.0,
    output_limit: Annotated[int, typer.Option(
        min=0, help="Bytes of each task's stdout/stderr kept in its log.")] = 1 << 20,
    registered_only: Annotated[bool, typer.Option(
        "--registered-only", help="Only run functions declared with @pgbg.task in the "
        "--import modules; any other name fails without being imported.")] = False,
    imports: Annotated[list[str] | None, typer.Option(
        "--import", help="A module to import before the first task (repeatable; also "
        "PGBG_IMPORT, comma-separated): its @pgbg.task functions are declared, and an "
        "import error stops the worker at its start.")] = None,
    listen: Annotated[bool | None, typer.Option(
        "--listen/--no-listen", help="--no-listen: poll only (for a transaction-pooling "
        "PgBouncer); default from PGBG_NO_LISTEN.")] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run tasks, each in its own child process, until stopped.

    Example: pgbg worker --concurrency 4

    SIGTERM or Ctrl-C stops claiming and lets running tasks finish (up to
    --shutdown-timeout); a second Ctrl-C (or SIGTERM) kills them at once.
    """
    from pgbg.admin import parse_duration
    from pgbg.worker import Worker

    setup_logging(log_level)
    if listen is not None:
        # for the whole process tree: the fork server and the tasks' own connections too
        # (--no-listen: poll only and prepare nothing, as behind a PgBouncer)
        os.environ["PGBG_NO_LISTEN"] = "0" if listen else "1"
    w = Worker(concurrency, poll_interval=poll_interval, shutdown_timeout=shutdown_timeout,
               kill_grace=kill_grace, heartbeat_interval=heartbeat_interval, lease=lease,
               task_timeout=task_timeout,
               retention=parse_duration(retention).total_seconds() if retention else None,
               allow=allow or _env_list("PGBG_ALLOW"), retry_backoff=retry_backoff,
               output_limit=output_limit, listen=listen, registered_only=registered_only,
               imports=imports or _env_list("PGBG_IMPORT") or ())

    def on_signal(_signum: int, _frame: object) -> None:
        w.stop()  # a second SIGINT/SIGTERM is a hard stop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    w.run()


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [item.strip() for item in value.split(",") if item.strip()] or None


@app.command()
@command
def migrate(
    sql: Annotated[bool, typer.Option("--sql", help="Print the DDL, run nothing.")] = False,
) -> None:
    """Create or update the pgbg schema in the database.

    Example: PGBG_DATABASE_URL=postgresql://app@db/app pgbg migrate
    """
    from pgbg import migrate as migrations

    if sql:
        typer.echo(migrations.upgrade_sql())
        return
    migrations.upgrade()
    typer.echo(f"pgbg schema is at revision {migrations.head_revision()} "
               f"in {db.mask_url(db.database_url())}")


@app.command()
@command
def demo(
    tasks: Annotated[int, typer.Option(min=4, help="How many tasks to queue.")] = 36,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker concurrency.")] = 4,
    keep_db: Annotated[bool, typer.Option(
        help="Leave the embedded server running if the demo started it.")] = False,
) -> None:
    """Show pgbg's main job: queue tasks with priorities and limits, run, report.

    Example: pgbg demo --tasks 40
    """
    from pgbg import demo as demo_module

    raise typer.Exit(demo_module.run(tasks=tasks, concurrency=concurrency, keep_db=keep_db))


@db_app.command("url")
@command
def db_url() -> None:
    """Print the database URL pgbg uses (password masked).

    Example: pgbg db url
    """
    typer.echo(db.mask_url(db.database_url()))


@db_app.command("start")
@command
def db_start() -> None:
    """Start the embedded PostgreSQL server (if it is not running).

    Example: pgbg db start
    """
    from pgbg import embedded

    srv, started = embedded.ensure_running()
    typer.echo(f"{'started' if started else 'already running'}: {srv.url}")


@db_app.command("stop")
@command
def db_stop() -> None:
    """Stop the embedded PostgreSQL server.

    Example: pgbg db stop
    """
    from pgbg import embedded

    typer.echo("stopped" if embedded.stop() else "not running")


@db_app.command("status")
@command
def db_status(as_json: JsonOption = False) -> None:
    """Say which database pgbg uses and whether the embedded server runs.

    Example: pgbg db status --json
    """
    from pgbg import embedded

    srv = embedded.server()
    status = {"source": db.url_source(), "embedded_running": srv.is_running(),
              "embedded_pid": srv.pid(), "embedded_data_dir": str(srv.data_dir),
              "embedded_url": srv.url}
    if as_json:
        typer.echo(json.dumps(status))
    else:
        for key, value in status.items():
            typer.echo(f"{key}: {value}")


@app.command()
@command
def bench(
    quick: Annotated[bool, typer.Option(help="Small sizes: a smoke run in seconds.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker concurrency.")] = 2,
    deep_queued: Annotated[int, typer.Option(help="Queued rows in the deep-queue run.")] = 200_000,
    deep_finished: Annotated[int, typer.Option(
        help="Finished rows in the deep-queue run.")] = 1_000_000,
    backlog: Annotated[int, typer.Option(
        help="Queued {\"import\": 1} tasks ahead of the backlog run's tasks (0: skip it).")
    ] = 20_000,
    rss_tasks: Annotated[int, typer.Option(
        help="Instead: run this many no-op tasks and report the worker's RSS growth.")] = 0,
    workers: Annotated[str | None, typer.Option(
        "--workers", help="Instead: many worker processes, e.g. 1,2,4,8: throughput, "
        "database CPU and short claims per task.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Measure enqueue and processing rates, latencies and memory on your database.

    Runs in a scratch database next to the configured one, dropped afterwards.
    Example: pgbg bench --json > bench.json
    """
    from rich.console import Console

    from pgbg import bench as bench_module
    from pgbg.cli.common import print_json, table

    sizes = bench_module.Sizes(concurrency=concurrency, deep_queued=deep_queued,
                               deep_finished=deep_finished, backlog=backlog)
    if quick:
        sizes = bench_module.Sizes(enqueue_single=200, enqueue_bulk=2000, process_noop=300,
                                   process_sleep=100, latency=20, terminate=3, wait=10,
                                   deep_queued=2000, deep_finished=10000,
                                   concurrency=concurrency, backlog=min(backlog, 2000),
                                   backlog_tasks=100)
    console = Console(stderr=True)
    with console.status("benchmarking…") as status:
        def step(name: str) -> None:
            status.update(f"benchmarking: {name}…")

        if workers:
            from pgbg import bench_workers

            counts = [int(n) for n in workers.split(",") if n.strip()]
            sized = bench_workers.WorkerSizes(counts=counts, concurrency=concurrency)
            if quick:
                sized.prefilled, sized.stream, sized.idle = 200, 100, 10
            report = bench_workers.run(sized, step)
        elif rss_tasks:
            report = bench_module.rss_soak(rss_tasks, concurrency, step)
        else:
            report = bench_module.run(sizes, step)
    if as_json:
        print_json(report.rows)
    else:
        Console().print(table("pgbg bench", ["workload", "value", "unit", "note"],
                              [[r["workload"], f"{r['value']:,.1f}", r["unit"], r["note"]]
                               for r in report.rows]))
