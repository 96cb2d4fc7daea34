"""What every command shares: the Typer apps, error handling, output as table or JSON."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer

from pgbg.exceptions import PgbgError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
                  help="PostgreSQL-backed background tasks.")
db_app = typer.Typer(no_args_is_help=True, help="The database pgbg uses.")
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys) for scripts.")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]

_LOG_FIELDS = ("task_id", "task_type", "pid", "worker_id", "attempt", "delay", "concurrency",
               "running", "status", "listen")


class _Formatter(logging.Formatter):
    """Constant messages, with the structured fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{k}={getattr(record, k)}" for k in _LOG_FIELDS if hasattr(record, k)]
        return f"{text} {' '.join(fields)}" if fields else text


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pgbg")
    root.addHandler(handler)
    root.setLevel(level.upper())


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def command(func: F) -> F:
    """Turn pgbg's errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (PgbgError, TimeoutError) as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def jsonable(value: Any) -> Any:
    """Dataclasses, enums, uuids, datetimes and timedeltas as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(jsonable(value), indent=2))


def console() -> Any:
    from rich.console import Console

    return Console()


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Any:
    from rich.table import Table

    out = Table(title=title)
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*["" if cell is None else str(cell) for cell in row])
    return out


def ago(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = (datetime.now(moment.tzinfo) - moment).total_seconds()
    return seconds_text(seconds) + " ago"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
