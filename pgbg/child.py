"""What runs in the forked child: isolate, import, call, report, ``os._exit``.

The child never touches the parent's connections: it reports its outcome as one JSON
message on a pipe, and opens a connection of its own only if the task records something.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any, NoReturn

from pgbg import context
from pgbg.models import BackgroundTask

_PR_SET_PDEATHSIG = 1
try:  # loaded once in the parent, so a child pays nothing for it
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def resolve(func: str) -> Any:
    """Import ``module:qualname`` and return the function it names."""
    module_name, _, qualname = func.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def run(task: BackgroundTask, report_fd: int, parent_pid: int) -> NoReturn:
    """Run ``task`` in this freshly forked process, then exit without returning."""
    code = 70  # EX_SOFTWARE, should reporting itself fail
    try:
        _isolate(parent_pid)
        message, code = _call(task)
        _report(report_fd, message)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


PARENT_DIED = signal.SIGRTMIN + 3  # sent to the child by the kernel when the worker dies


def _kill_own_group(_signum: int, _frame: object) -> None:
    os.killpg(0, signal.SIGKILL)  # the task and everything it started, this process included


def _isolate(parent_pid: int) -> None:
    os.setpgid(0, 0)  # own process group: terminating the task kills all it started
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    # When the worker dies, the kernel signals the child, which kills its whole group,
    # grandchildren included: a task never outlives the worker that owns it.
    signal.signal(PARENT_DIED, _kill_own_group)
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(PARENT_DIED), 0, 0, 0)
    if os.getppid() != parent_pid:  # the worker died before the death signal was armed
        os.killpg(0, signal.SIGKILL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _call(task: BackgroundTask) -> tuple[dict[str, Any], int]:
    context.enter(dataclasses.replace(task, pid=os.getpid()))
    try:
        func = resolve(task.func)
        result = func(*task.args, **task.kwargs)
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return {"status": "succeeded"}, 0
        if isinstance(exc.code, int):
            return {"status": "failed", "error": f"exited with code {exc.code}"}, exc.code & 0xFF
        return {"status": "failed", "error": str(exc.code)}, 1
    except BaseException:
        return {"status": "failed", "error": traceback.format_exc()}, 1
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {"status": "failed",
                "error": f"the return value is not JSON-serialisable: {exc}"}, 1
    return {"status": "succeeded", "result": result}, 0


def _report(fd: int, message: dict[str, Any]) -> None:
    message["error_exit"] = context.error_exit_recorded()
    data = json.dumps(message, allow_nan=False).encode()
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.close(fd)
