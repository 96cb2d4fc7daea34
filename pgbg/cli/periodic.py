"""``pgbg periodic``: declare, list and remove periodic tasks."""

from __future__ import annotations

from typing import Annotated

import typer

import pgbg
from pgbg.admin import parse_duration
from pgbg.cli.common import JsonOption, app, command, console, print_json, table
from pgbg.cli.tasks import (
    ArgsOption,
    CheckOption,
    FuncArgument,
    KwargsOption,
    LimitOption,
    MaxAttemptsOption,
    NumProcOption,
    PriorityOption,
    TimeoutOption,
    _check_importable,
    _parse_json,
    _parse_limits,
)

periodic_app = typer.Typer(no_args_is_help=True,
                           help="Periodic tasks: a function queued once per period.")
app.add_typer(periodic_app, name="periodic")


@periodic_app.command("add")
@command
def add(
    name: Annotated[str, typer.Argument(help="A name of your choice; adding it again updates it.")],
    func: FuncArgument,
    cron: Annotated[str | None, typer.Option(
        help="A cron expression, e.g. '0 3 * * *' (a sixth field is seconds).")] = None,
    every: Annotated[str | None, typer.Option(
        help="Or a period: 90s, 15m, 1h, 1d (counted from the Unix epoch).")] = None,
    timezone: Annotated[str, typer.Option(help="The time zone --cron is read in.")] = "UTC",
    task_type: Annotated[str | None, typer.Option(
        "--type", "-t", help="The task type (default: the name).")] = None,
    args: ArgsOption = "[]",
    kwargs: KwargsOption = "{}",
    priority: PriorityOption = 0,
    num_proc: NumProcOption = 0,
    limit: LimitOption = None,
    timeout: TimeoutOption = None,
    max_attempts: MaxAttemptsOption = 1,
    skip_if_running: Annotated[bool, typer.Option(
        help="Skip a period while the last task is still queued or running.")] = False,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled",
                                          help="--disabled: declared, not queued.")] = True,
    check: CheckOption = True,
    as_json: JsonOption = False,
) -> None:
    """Queue a function once per period, from now on; prints when it is next due.

    Example: pgbg periodic add nightly app.jobs:report --cron '0 3 * * *' --timezone Europe/Paris
    """
    target = pgbg.api.function_name(func)
    positional = _parse_json("--args", args, list)
    keywords = _parse_json("--kwargs", kwargs, dict)
    limits = _parse_limits(limit or [])
    period = parse_duration(every) if every is not None else None
    if check:
        _check_importable(target)
    declared = pgbg.add_periodic(
        name, target, positional, keywords, cron=cron, every=period, timezone=timezone,
        task_type=task_type, priority=priority, num_proc=num_proc, num_of_task_type=limits,
        timeout=timeout, max_attempts=max_attempts, skip_if_running=skip_if_running,
        enabled=enabled)
    if as_json:
        print_json(declared)
    else:
        typer.echo(f"{declared.name}: {declared.schedule}, next at "
                   f"{declared.next_run_at.isoformat()}")


@periodic_app.command("ls")
@command
def ls(as_json: JsonOption = False) -> None:
    """List periodic tasks, the next due first.

    Example: pgbg periodic ls --json
    """
    found = pgbg.list_periodic()
    if as_json:
        print_json(found)
        return
    rows = [[p.name, p.func, p.schedule, p.timezone if p.cron else "",
             "yes" if p.enabled else "no", p.next_run_at.isoformat(timespec="seconds"),
             p.last_period.isoformat(timespec="seconds") if p.last_period else "",
             str(p.last_task_id or "")] for p in found]
    console().print(table(None, ["name", "function", "schedule", "zone", "enabled", "next",
                                 "last period", "last task"], rows))


@periodic_app.command("rm")
@command
def rm(name: Annotated[str, typer.Argument(help="The periodic task's name.")]) -> None:
    """Stop queueing a periodic task (tasks already queued are left alone).

    Example: pgbg periodic rm nightly-report
    """
    pgbg.remove_periodic(name)
    typer.echo(f"removed {name}")
