"""What runs in the forked child: isolate, import, call, report, ``os._exit``.

The child is forked by the fork server, not by the worker, and holds no database
connection: it reports what it records and how it ended as JSON lines on a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import inspect
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import fields
from typing import Any, NoReturn

from pgbg import context, registry, storable
from pgbg.allowlist import defined_in_allowed, dotted, module_allowed
from pgbg.exceptions import InvalidTaskFunction, NotAllowed, UnstorableValue
from pgbg.models import BackgroundTask

MAX_REPORT = 32 << 20  # bytes of one report line; the worker discards longer ones
PR_SET_PDEATHSIG = 1
PARENT_DIED = signal.SIGRTMIN + 3  # sent by the kernel when the forking process dies
try:  # loaded once before forking, so a child pays nothing for it
    libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    libc = None
if libc is not None:  # typed up front: the child's call then converts nothing new
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int


def exception_names(cls: type) -> list[str]:
    """``module.Qualname`` of an exception class and its bases (retry_on matches any)."""
    return [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__
            if c not in (BaseException, Exception, object)]


_allow: tuple[str, ...] | None = None  # the worker's --allow (None: any), from ``setup``
_registered_only = False  # the worker's --registered-only, from ``setup``


def setup(database_url: str, allow: Sequence[str] | None,
          registered_only: bool = False) -> None:
    """In the fork server, before it forks: what every child inherits from the worker."""
    global _allow, _registered_only
    context.database_url = database_url
    _allow = tuple(allow) if allow is not None else None
    _registered_only = registered_only


def import_modules(modules: Sequence[str]) -> str | None:
    """In the fork server, before it forks: import the worker's task modules (``--import``),
    which declares their tasks; the first failure, as one line, or None."""
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # SystemExit from an import included
            message = str(exc).strip().splitlines()
            return (f"cannot import the task module {module!r}: {type(exc).__name__}"
                    + (f": {message[0]}" if message else ""))
    return None


def resolve(func: str, allow: Sequence[str] | None = None,
            registered_only: bool = False) -> Any:
    """Import ``module:qualname`` and return the function it names. With ``allow`` (module
    prefixes), only a plain function defined in one of those modules: a name that merely
    reaches one through them (``myapp.tasks:os.system``) is refused, and a module outside
    them is never imported. With ``registered_only``, only a function declared with
    ``@pgbg.task`` in the modules already imported (``--import``): any other name is
    refused, and nothing is imported."""
    module_name, colon, qualname = func.partition(":")
    refused = NotAllowed(f"not allowed: {func} is not a function defined in this worker's "
                         f"allowed modules ({', '.join(allow or ())})")
    if not colon or not dotted(module_name) or not dotted(qualname):
        if allow is not None:
            raise refused
        raise InvalidTaskFunction(f"{func!r} is not a module:qualname function name")
    if not module_allowed(module_name, allow):
        raise refused
    target: Any = registry.declared(func)
    if registered_only and target is None:
        raise NotAllowed(f"not allowed: {func} is not declared with @pgbg.task in this "
                         "worker's task modules (--registered-only)")
    if target is None:
        target = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    # a task object (``@pgbg.task``'s, ``django.tasks``'): what it wraps is what it runs
    function = getattr(target, "func", target) if not inspect.isfunction(target) else target
    if allow is not None and not defined_in_allowed(function, allow):
        raise refused
    return target


def serve(task_fd: int, report_fd: int, parent_pid: int) -> NoReturn:
    """A spare child: isolate now, then wait for the one task it will run (sent as JSON on
    ``task_fd``), run it and exit. Forked ahead of need, so a task starts without waiting
    for a fork; it is never reused. End of file without a task: exit quietly."""
    code = 70  # EX_SOFTWARE, should reporting itself fail
    try:
        _isolate(parent_pid)
        _rehearse()
        data = b""
        while chunk := os.read(task_fd, 65536):
            data += chunk
        os.close(task_fd)
        if data:
            task = json.loads(data)  # a BackgroundTask only if the task asks for it
            context.enter(task, report_fd)
            message, code = _call(task, _allow, _registered_only)
            _flush()  # what it printed is in the output pipe before its outcome is reported
            context.report({**message, "exit_code": code})
        else:
            code = 0
    finally:
        _flush()
        os._exit(code)


# A task as the worker sends it: every field, only the ones ``_call`` reads filled in.
REHEARSAL = json.dumps({**dict.fromkeys(f.name for f in fields(BackgroundTask)),
                        "func": f"{__name__}:_idle", "args": [], "kwargs": {}})


def _idle() -> None:
    """The function of the rehearsal."""


def _rehearse() -> None:
    """Walk a task's path once with nothing to do, while waiting for the real one: a forked
    child's first touch of each page it writes (reference counts included) copies that
    page, some 100 pages on this path: about 0.3 ms of a task's start and end, taken
    here off both (read, call and report timed in fresh children)."""
    message, code = _call(json.loads(REHEARSAL), None)
    json.dumps({**message, "exit_code": code}, allow_nan=False).encode()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _kill_own_group(_signum: int, _frame: object) -> None:
    os.killpg(0, signal.SIGKILL)  # the task and everything it started, this process included


def inherited_signals() -> None:
    """In the fork server, before it forks a spare: the signal dispositions every child
    needs that a fork passes on, set once here rather than in every child.

    SIGPIPE ignored (as Python sets it at startup; said again so that it holds): a write
    to a closed pipe raises BrokenPipeError in the task instead of killing it (subprocess
    restores the default for the programs a task executes). PARENT_DIED kills the child's
    whole group, grandchildren included, when the process that forked it dies: a task
    never outlives the worker that owns it. The fork server itself never receives
    PARENT_DIED (its own parent-death signal is SIGKILL)."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(PARENT_DIED, _kill_own_group)


_SIGINT, _SIGTERM, _SIG_DFL = int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIG_DFL)
# The C function under ``signal.signal`` (no stub in typeshed): plain ints in and out.
_set_handler: Callable[[int, int], object] = importlib.import_module("_signal").signal


def _isolate(parent_pid: int) -> None:
    """Only what a fork does not inherit (``inherited_signals`` is): every page this
    touches is a page copied, in every child (stdin is already /dev/null: the fork
    server's is). ``_set_handler``, not ``signal.signal``: the latter's conversion of
    the old handler to an enum member alone copies some 60 pages (measured)."""
    os.setpgid(0, 0)  # own process group: terminating the task kills all it started
    for sig in (_SIGINT, _SIGTERM):  # the fork server's: ignored
        _set_handler(sig, _SIG_DFL)
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DIED), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os.killpg(0, signal.SIGKILL)


def _run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an ``async def`` task to its end in a new event loop: uvloop's when it is
    installed, else asyncio's. Its value is the task's as soon as the coroutine returns:
    the loop is never closed, so what the task left behind (tasks that ignore their
    cancellation, executor threads) ends with the process, as a sync task's threads do.
    A terminate kills the whole process group, loop and all."""
    import asyncio  # here: a child of a sync task never pays for it

    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coroutine)


def _call(task: dict[str, Any], allow: Sequence[str] | None = None,
          registered_only: bool = False) -> tuple[dict[str, Any], int]:
    outcome: dict[str, Any] = {"kind": "outcome"}
    try:
        func = resolve(task["func"], allow, registered_only)
        result = func(*task["args"], **task["kwargs"])
        if inspect.iscoroutine(result):  # an ``async def`` task: its own event loop
            result = _run_coroutine(result)
    except NotAllowed as exc:  # the one line says it all (only resolve raises it)
        return {**outcome, "status": "failed", "error": str(exc), "refused": True}, 1
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return {**outcome, "status": "succeeded"}, 0
        if isinstance(exc.code, int):
            return {**outcome, "status": "failed",
                    "error": f"exited with code {exc.code}"}, exc.code & 0xFF
        return {**outcome, "status": "failed", "error": str(exc.code)}, 1
    except BaseException as exc:
        return {**outcome, "status": "failed", "error": traceback.format_exc(),
                "exception_types": exception_names(type(exc))}, 1
    try:  # what jsonb cannot store exactly is refused here, by the rule enqueue applies
        storable.check_json(result, "result")
        size = len(json.dumps(result, allow_nan=False))
    except (UnstorableValue, TypeError, ValueError) as exc:
        return {**outcome, "status": "failed",
                "error": f"the return value cannot be stored: {exc}"}, 1
    if size > MAX_REPORT - 4096:
        return {**outcome, "status": "failed",
                "error": f"the return value is {size} bytes as JSON, over the limit of "
                         f"{MAX_REPORT - 4096}"}, 1
    return {**outcome, "status": "succeeded", "result": result}, 0
