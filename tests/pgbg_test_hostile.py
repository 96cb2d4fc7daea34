"""Task functions that misbehave towards pgbg's own machinery: the report pipe, SIGPIPE,
long C calls. Workers import this module by name (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import Any

from pgbg import context


def write_to_closed_pipe() -> str:
    """Write to a pipe whose reader is gone: BrokenPipeError, as in any Python process."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        os.write(write_end, b"x")
    except BrokenPipeError:
        return "BrokenPipeError"
    finally:
        os.close(write_end)
    return "no error"


def write_to_report_pipe(garbage: str, repeat: int = 1, end: str = "") -> str:
    """Write ``garbage`` (``repeat`` times, then ``end``) to the report pipe, as an
    inherited descriptor in a multiprocessing child would; then return normally."""
    data = memoryview(garbage.encode() * repeat + end.encode())
    while data:
        data = data[os.write(context._report_fd, data):]
    return "wrote"


def environment() -> dict[str, str]:
    return dict(os.environ)


def sleep_in_c(pidfile: str, seconds: int) -> None:
    """Hold the interpreter in one long C call (libc ``sleep``): no Python signal handler
    runs until it returns. Forks a grandchild first, in the same process group."""
    grandchild = os.fork()
    if grandchild == 0:
        ctypes.CDLL(None).sleep(seconds)
        os._exit(0)
    Path(pidfile).write_text(f"{os.getpid()} {grandchild}")
    # one C call that neither returns on a signal nor checks for one: no handler runs
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 2**31 - 1)  # the most it takes: a long while


def enqueue_and_wait(a: int, b: int) -> Any:
    import pgbg

    return pgbg.run_in_background("pgbg_test_tasks:add", "inner", a, b).get(timeout=60)
