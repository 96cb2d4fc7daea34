"""The shipped systemd unit drains on ``systemctl stop`` (there is no systemd here: parsed)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import typer.main

from pgbg.cli import app

UNIT = Path(__file__).parents[2] / "examples" / "systemd" / "pgbg-worker.service"


def _seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def _option(args: list[str], name: str, default: float) -> float:
    return float(args[args.index(name) + 1]) if name in args else default


def test_the_unit_drains_on_stop_and_restarts_on_failure() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["KillMode"] == "mixed"  # SIGTERM to the worker alone, not every task
    assert service["Restart"] == "on-failure"
    args = service["ExecStart"].split()
    assert args[0].endswith("pgbg") and args[1] == "worker"
    params = {p.name: p.default for p in typer.main.get_command(app).commands["worker"].params}
    shutdown = _option(args, "--shutdown-timeout", float(params["shutdown_timeout"]))
    grace = _option(args, "--kill-grace", float(params["kill_grace"]))
    assert _seconds(service["TimeoutStopSec"]) > shutdown + grace
