"""Task functions the dashboard's tests queue (workers import this module by name)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pgbg

HOSTILE = "<script>alert('pgbg')</script><img src=x onerror=alert(1)>\u202e\x1b[31m"


def fail(message: str) -> None:
    raise ValueError(message)


def succeed(value: Any) -> Any:
    return value


def talk_and_block(pidfile: str) -> None:
    """Log, print, start a grandchild (``sleep``), write both pids, then run until
    terminated."""
    pgbg.record_task_info("started; spawning a grandchild")
    grandchild = subprocess.Popen(["sleep", "1000"])
    print(f"child {os.getpid()} grandchild {grandchild.pid}", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    Path(pidfile + ".tmp").write_text(f"{os.getpid()} {grandchild.pid} {os.getpgid(0)}")
    os.rename(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(1)


def hostile() -> str:
    pgbg.record_task_info(HOSTILE)
    pgbg.record_task_related(HOSTILE, HOSTILE)
    print(HOSTILE, flush=True)
    raise RuntimeError(HOSTILE)
