"""Commands that look at and steer tasks: ls, show, queued, running, workers, enqueue,
wait, terminate, remove, retry, purge, stats, doctor."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from typing import Annotated, Any

import typer

import pgbg
from pgbg import admin
from pgbg.cli.common import (
    JsonOption,
    ago,
    app,
    command,
    console,
    fail,
    jsonable,
    print_json,
    seconds_text,
    table,
)
from pgbg.exceptions import InvalidOption, InvalidTaskFunction
from pgbg.models import BackgroundTask

TaskIds = Annotated[list[str], typer.Argument(help="Task ids.", show_default=False)]
TypeOption = Annotated[str | None, typer.Option("--type", "-t", help="Exact task type.")]


def _ids(ids: list[str]) -> list[Any]:
    """Every id checked before anything is done, so bad input changes nothing."""
    return [pgbg.api.task_id(i) for i in ids]


def _task_rows(tasks: list[BackgroundTask]) -> list[list[Any]]:
    return [[str(t.id), t.task_type, t.status.value, t.priority, t.attempt, ago(t.queued_at),
             t.pid, (t.error or "").strip().splitlines()[-1][:60] if t.error else ""]
            for t in tasks]


_TASK_COLUMNS = ["id", "type", "status", "priority", "attempt", "queued", "pid", "error"]


@app.command("ls")
@command
def ls(
    status: Annotated[list[str] | None, typer.Option(
        "--status", "-s", help="Only these statuses (repeatable).")] = None,
    task_type: TypeOption = None,
    since: Annotated[str | None, typer.Option(help="Queued within, e.g. 1h, 7d.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first.

    Example: pgbg ls --status failed --type export --since 1d
    """
    tasks = admin.list_tasks(status, task_type, admin.parse_duration(since) if since else None,
                             limit)
    if as_json:
        print_json(tasks)
    else:
        console().print(table(None, _TASK_COLUMNS, _task_rows(tasks)))


@app.command()
@command
def running(task_type: TypeOption = None, as_json: JsonOption = False) -> None:
    """List running tasks with their worker, pid and elapsed time.

    Example: pgbg running --type report
    """
    tasks = admin.list_tasks(["running"], task_type, None, 10_000)
    if as_json:
        print_json(tasks)
        return
    rows = [[str(t.id), t.task_type, t.hostname, t.pid, t.attempt, ago(t.started_at)]
            for t in tasks]
    console().print(table(None, ["id", "type", "host", "pid", "attempt", "started"], rows))


@app.command()
@command
def show(task: Annotated[str, typer.Argument(help="Task id.")],
         as_json: JsonOption = False) -> None:
    """Everything about one task: its row, log lines and links.

    Example: pgbg show 0b5c3f0e-6f7d-4c1a-9a0e-2f1d3c4b5a69
    """
    row = pgbg.get_task(task)
    log = admin.get_task_log(row.id)
    links = admin.get_task_links(row.id)
    if as_json:
        print_json({"task": row, "log": log, "links": [list(link) for link in links]})
        return
    out = console()
    fields = dataclasses.asdict(row)
    out.print(table(f"task {row.id}", ["field", "value"],
                    [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                     for k, v in fields.items() if k != "error"]))
    if row.error:
        out.print("[bold]error[/]")
        out.print(row.error, markup=False, highlight=False)
    if log:
        out.print(table("log", ["at", "level", "message"],
                        [[line.at.isoformat(), line.level, line.message] for line in log]))
    if links:
        out.print(table("links", ["kind", "key"], [list(link) for link in links]))


@app.command()
@command
def queued(task_type: TypeOption = None, as_json: JsonOption = False) -> None:
    """The queue in claim order: position, priority, and what each task waits for.

    Example: pgbg queued --type thumbnail
    """
    waiting = pgbg.get_queued_tasks(task_type)
    if as_json:
        print_json([{**jsonable(q), "reason": q.reason} for q in waiting])
        return
    rows = [[q.queue_position, q.task_id, q.task_type, q.priority, ago(q.queued_at), q.reason]
            for q in waiting]
    console().print(table(None, ["#", "id", "type", "priority", "queued", "waiting for"], rows))


@app.command()
@command
def workers(as_json: JsonOption = False) -> None:
    """Live workers: host, pid, concurrency, running tasks, last heartbeat.

    Example: pgbg workers --json
    """
    found = admin.list_workers()
    if as_json:
        print_json(found)
        return
    rows = [[str(w.id), w.hostname, w.pid, w.concurrency, w.running, ago(w.started_at),
             seconds_text(w.heartbeat_age) + " ago"] for w in found]
    console().print(table(None, ["id", "host", "pid", "concurrency", "running", "started",
                                 "heartbeat"], rows))


def _parse_limits(limits: list[str]) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for item in limits:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise InvalidOption(f"--limit takes TYPE=N (e.g. --limit export=2), not {item!r}")
        parsed[name] = int(value)
    return parsed


def _parse_json(option: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidOption(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise InvalidOption(f"{option} must be a JSON {'array' if kind is list else 'object'}")
    return value


def _check_importable(func: str) -> None:
    module, _, qualname = func.partition(":")
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        raise InvalidTaskFunction(f"no module named {module!r} here (use --no-check to queue "
                                  "it for workers that have it)")
    from pgbg.child import resolve

    try:
        target = resolve(func)
    except AttributeError:
        raise InvalidTaskFunction(f"module {module!r} has no function {qualname!r}") from None
    if not callable(target):
        raise InvalidTaskFunction(f"{func} is not callable")


# The options of a task, shared by `enqueue` and `periodic add`.
FuncArgument = Annotated[str, typer.Argument(help="The function, as module:function.")]
ArgsOption = Annotated[str, typer.Option(help="Positional arguments, a JSON array.")]
KwargsOption = Annotated[str, typer.Option(help="Keyword arguments, a JSON object.")]
PriorityOption = Annotated[int, typer.Option(help="Higher runs first.")]
NumProcOption = Annotated[int, typer.Option(min=0, help="Start only while fewer run.")]
LimitOption = Annotated[list[str] | None, typer.Option(
    help="TYPE=N: start only while fewer than N of TYPE run (repeatable).")]
TimeoutOption = Annotated[float | None, typer.Option(help="Time limit in seconds.")]
MaxAttemptsOption = Annotated[int, typer.Option(min=1, help="Attempts allowed.")]
CheckOption = Annotated[bool, typer.Option(help="Check the function can be imported here.")]


@app.command()
@command
def enqueue(
    func: FuncArgument,
    task_type: Annotated[str, typer.Option("--type", "-t", help="The task type.")],
    args: ArgsOption = "[]",
    kwargs: KwargsOption = "{}",
    priority: PriorityOption = 0,
    num_proc: NumProcOption = 0,
    limit: LimitOption = None,
    timeout: TimeoutOption = None,
    max_attempts: MaxAttemptsOption = 1,
    check: CheckOption = True,
    as_json: JsonOption = False,
) -> None:
    """Queue a function by name; prints the task id.

    Example: pgbg enqueue myapp.tasks:resize --type thumbnail --args '[42, 256]' --limit thumbnail=3
    """
    name = pgbg.api.function_name(func)
    positional = _parse_json("--args", args, list)
    keywords = _parse_json("--kwargs", kwargs, dict)
    limits = _parse_limits(limit or [])
    if check:
        _check_importable(name)
    result = pgbg.enqueue(name, positional, keywords, task_type=task_type, priority=priority,
                          num_proc=num_proc, num_of_task_type=limits, timeout=timeout,
                          max_attempts=max_attempts)
    if as_json:
        print_json({"id": result.id})
    else:
        typer.echo(str(result.id))


@app.command()
@command
def wait(task: Annotated[str, typer.Argument(help="Task id.")],
         timeout: Annotated[float | None, typer.Option(help="Give up after seconds.")] = None,
         as_json: JsonOption = False) -> None:
    """Wait for a task to finish; exit 0 only if it succeeded.

    Example: pgbg wait 0b5c3f0e-6f7d-4c1a-9a0e-2f1d3c4b5a69 --timeout 60
    """
    row = pgbg.wait_task(task, timeout)
    if as_json:
        print_json(row)
    else:
        typer.echo(f"{row.id} {row.status.value}")
    if not row.completed_successfully:
        last = (row.error or "").strip().splitlines()
        raise fail(f"task {row.id} {row.status.value}: {last[-1] if last else 'no error'}")


@app.command()
@command
def terminate(tasks: TaskIds,
              timeout: Annotated[float, typer.Option(help="Wait at most seconds each.")] = 60,
              as_json: JsonOption = False) -> None:
    """Stop tasks: queued ones are cancelled, running ones killed wherever they run.

    Example: pgbg terminate 0b5c3f0e-6f7d-4c1a-9a0e-2f1d3c4b5a69
    """
    rows = [pgbg.terminate_background(tid, timeout=timeout) for tid in _ids(tasks)]
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            typer.echo(f"{row.id} {row.status.value}")


@app.command()
@command
def remove(tasks: TaskIds) -> None:
    """Remove tasks that have not started from the queue.

    Example: pgbg remove 0b5c3f0e-6f7d-4c1a-9a0e-2f1d3c4b5a69
    """
    for tid in _ids(tasks):
        pgbg.remove_task_from_queue(tid)
        typer.echo(f"{tid} removed")


@app.command()
@command
def retry(tasks: TaskIds) -> None:
    """Queue failed, terminated or cancelled tasks again as new attempts.

    Example: pgbg retry 0b5c3f0e-6f7d-4c1a-9a0e-2f1d3c4b5a69
    """
    for tid in _ids(tasks):
        admin.retry_task(tid)
        typer.echo(f"{tid} queued")


@app.command()
@command
def purge(
    older_than: Annotated[str, typer.Option(help="Finished longer ago than, e.g. 7d.")],
    status: Annotated[list[str] | None, typer.Option(
        help="Only these finished statuses (repeatable); default all finished.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per transaction.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Delete finished tasks (and their logs and links), in small batches.

    Safe while workers run: queued and running tasks are never touched.

    Example: pgbg purge --older-than 7d --status succeeded
    """
    deleted = admin.purge_tasks(admin.parse_duration(older_than), status, batch_size)
    if as_json:
        print_json({"deleted": deleted})
    else:
        typer.echo(f"deleted {deleted} tasks")


@app.command()
@command
def stats(window: Annotated[str, typer.Option(help="Finished within, e.g. 1h, 7d.")] = "24h",
          as_json: JsonOption = False) -> None:
    """Per task type: queued, running, outcomes, and p50/p95 wait and run time.

    Example: pgbg stats --window 7d
    """
    found = admin.task_stats(admin.parse_duration(window))
    if as_json:
        print_json(found)
        return
    columns = ["type", "queued", "running", "succeeded", "failed", "cancelled", "terminated",
               "wait p50", "wait p95", "run p50", "run p95"]
    rows = [[s["task_type"], s["queued"], s["running"], s["succeeded"], s["failed"],
             s["cancelled"], s["terminated"], seconds_text(s["wait_p50"]),
             seconds_text(s["wait_p95"]), seconds_text(s["run_p50"]), seconds_text(s["run_p95"])]
            for s in found]
    console().print(table(f"tasks in the last {window}", columns, rows))


@app.command()
@command
def doctor(lease: Annotated[float, typer.Option(help="The workers' lease, seconds.")] = 30,
           as_json: JsonOption = False) -> None:
    """Check what degrades a PostgreSQL queue, with a hint for each problem.

    Exits 1 when a check fails. Example: pgbg doctor
    """
    checks = admin.doctor(lease)
    if as_json:
        print_json(checks)
    else:
        rows = [["ok" if c.ok else "PROBLEM", c.name, c.value, "" if c.ok else c.hint]
                for c in checks]
        console().print(table("pgbg doctor", ["", "check", "reading", "hint"], rows))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
