"""Task functions the tests queue. Workers import this module by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pgbg


def add(a: int, b: int) -> int:
    return a + b


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def whoami() -> dict[str, Any]:
    task = pgbg.get_current_task()
    assert task is not None
    return {"os_pid": os.getpid(), "task_pid": task.pid, "proc_id": task.proc_id,
            "id": str(task.id), "uuid": task.uuid, "status": task.status.value,
            "generated": pgbg.get_or_generate_task_uuid(), "pgid": os.getpgid(0)}


def fail(message: str) -> None:
    raise ValueError(message)


def exit_with(code: int | None) -> None:
    sys.exit(code)


def exit_with_message(message: str) -> None:
    sys.exit(message)


def os_exit(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def signal_dispositions() -> dict[str, str]:
    """How this task's process treats the signals pgbg sets up for it."""
    from pgbg import child

    def disposition(handler: Any) -> str:
        if handler is child._kill_own_group:
            return "kills its group"
        return {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored"}.get(handler, repr(handler))

    return {name: disposition(signal.getsignal(sig)) for name, sig in (
        ("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM), ("SIGPIPE", signal.SIGPIPE),
        ("PARENT_DIED", child.PARENT_DIED))}


def error_exit_then_return(message: str) -> dict[str, Any]:
    pgbg.record_task_error_exit(message)
    return {"after": pgbg.get_current_task() is None}


def record_things(kind: str, key: str) -> str:
    pgbg.record_task_info("step 1 of 2")
    pgbg.record_task_related(kind, key)
    pgbg.record_task_info("step 2 of 2")
    return "recorded"


def not_json() -> object:
    return object()


def work(seconds: float) -> float:
    """Busy for a while (the work itself, so overlaps can be observed)."""
    time.sleep(seconds)
    return seconds


def block_until(path: str) -> str:
    """Run until the file ``path`` exists (the test creates it to let the task finish)."""
    while not Path(path).exists():
        time.sleep(0.01)
    return "released"


def spawn_and_block(pidfile: str) -> None:
    """Start a grandchild, write both pids, then block forever (until terminated)."""
    grandchild = subprocess.Popen(["sleep", "1000"])
    Path(pidfile + ".tmp").write_text(f"{os.getpid()} {grandchild.pid}")
    os.rename(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(1)


def ignore_sigterm_and_block(pidfile: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(pidfile + ".tmp").write_text(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(1)


class Holder:
    @staticmethod
    def static(x: int) -> int:
        return x * 2

    def method(self) -> None:
        return None


def logged_work(seconds: float) -> int:
    """Log which attempt ran in which process, then work for a while."""
    task = pgbg.get_current_task()
    assert task is not None
    pgbg.record_task_info(f"ran attempt {task.attempt} in pid {os.getpid()}")
    time.sleep(seconds)
    return task.attempt


def import_marker(path: str) -> str:
    """Import a module whose import leaves a mark on disk (to prove it was not imported)."""
    os.environ["PGBG_TEST_MARKER"] = path
    import pgbg_test_side_effect  # noqa: F401

    return "imported"


def fail_until_attempt(succeed_at: int, error: str = "ValueError") -> int:
    """Raise ``error`` (a builtin exception name) until attempt ``succeed_at``."""
    task = pgbg.get_current_task()
    assert task is not None
    if task.attempt < succeed_at:
        import builtins

        raise getattr(builtins, error)(f"attempt {task.attempt}")
    return task.attempt


def print_then_block(path: str) -> str:
    print("step 1 done")
    print("to stderr", file=sys.stderr)
    subprocess.run(["echo", "from a grandchild"], check=True)
    return block_until(path)


def print_lots(megabytes: int) -> int:
    line = "x" * 1023 + "\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(line)
    return megabytes


def append_when(release: str, ledger: str, value: str) -> str:
    """Wait for ``release`` to exist, then append one line to ``ledger`` and return
    ``value``: how many times the function ran is the number of lines."""
    while not Path(release).exists():
        time.sleep(0.01)
    with open(ledger, "a") as out:
        out.write(f"{value} {os.getpid()}\n")
    return value


UNSTORABLE = {"nul": "a\x00b", "surrogate": "x\ud800y"}


def unstorable_error(kind: str) -> None:
    """Fail with an exception whose message PostgreSQL's text cannot hold as it is (made
    here: such text cannot be queued as an argument)."""
    text = UNSTORABLE[kind]
    pgbg.record_task_info(f"info {text}")
    if kind == "nul":  # (a lone surrogate cannot be printed: UTF-8 has no bytes for it)
        print(f"printed {text}", flush=True)
    raise ValueError(f"message {text}")


def exclusive_until(release: str, lockfile: str, ledger: str) -> int:
    """Hold an exclusive lock on ``lockfile`` while running (until ``release`` exists),
    noting in ``ledger`` each start, each end, and an overlap: another process of the
    same task still running when this one started."""
    import fcntl

    with open(lockfile, "a") as lock, open(ledger, "a") as out:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out.write(f"overlap {os.getpid()}\n")
            out.flush()
            fcntl.flock(lock, fcntl.LOCK_EX)
        out.write(f"start {os.getpid()}\n")
        out.flush()
        while not Path(release).exists():
            time.sleep(0.01)
        out.write(f"end {os.getpid()}\n")
    return os.getpid()


def chaos_step(workdir: str, seconds: float, limit: int) -> str:
    """A task of the fault-injection run. In ``workdir``: holds the lock file of its own
    task while it runs (a second process of the same task finds it taken: "overlap"),
    and, with ``limit``, one of ``limit`` slot files of its type (none free: "excess");
    appends start and end lines to the ledger (one ``write`` each, O_APPEND). Returns
    "<id>:<attempt>" so the checker can match outcome and run."""
    import fcntl

    task = pgbg.get_current_task()
    assert task is not None
    me = f"{task.id} {task.attempt} {os.getpid()}"
    ledger = os.open(os.path.join(workdir, "ledger"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def note(line: str) -> None:
        os.write(ledger, f"{line} {me} {time.monotonic():.6f}\n".encode())

    held = []
    own = os.open(os.path.join(workdir, f"task-{task.id}"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        note("overlap")
    held.append(own)
    if limit:
        for slot in range(limit):
            fd = os.open(os.path.join(workdir, f"slot-{task.task_type}-{slot}"),
                         os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append(fd)
            break
        else:
            note("excess")
    note("start")
    time.sleep(seconds)
    note("end")
    for fd in reversed(held):  # the task's code is over: its slot is free
        os.close(fd)
    return f"{task.id}:{task.attempt}"


def error_exit_then_clean_up(release: str, done: str) -> None:
    """Record failure, then clean up for as long as it takes (until ``release`` exists)
    and leave a mark that the clean-up finished."""
    pgbg.record_task_error_exit("bad input")
    while not Path(release).exists():
        time.sleep(0.01)
    Path(done).write_text("cleaned up")


# Return values a task may produce that PostgreSQL cannot store (or not exactly).
UNSTORABLE_RESULTS: dict[str, Any] = {
    "nul": "a\x00b",
    "surrogate": "\ud800",
    "nested nul": {"k": ["ok", "a\x00b"]},
    "int key": {1: "one"},
    "negative zero": -0.0,
    "huge int": 10 ** 4300,
}
_deep: Any = []
for _ in range(1000):  # deeper than pgbg keeps
    _deep = [_deep]
UNSTORABLE_RESULTS["deep"] = _deep


def returns(name: str) -> Any:
    """Return the value ``UNSTORABLE_RESULTS[name]``."""
    return UNSTORABLE_RESULTS[name]


def _shape(value: Any) -> list[str]:
    """The exact type of every node of ``value``, in order, flat (so it nests no deeper
    than ``value``): what a JSON-equal copy could lose (int/float, -0.0). A tuple is a
    JSON array: it is shaped as the list it arrives as."""
    shape, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            shape.append(f"dict:{len(node)}")
            for key in reversed(sorted(node)):  # jsonb keeps no key order
                shape.append(f"key {type(key).__name__}")
                stack.append(node[key])
        elif isinstance(node, (list, tuple)):
            shape.append(f"list:{len(node)}")
            stack.extend(reversed(node))
        elif isinstance(node, float):
            shape.append(f"float {node!r}")  # repr tells -0.0 from 0.0
        else:
            shape.append(type(node).__name__)
    return shape


def received(value: Any) -> Any:
    """Record the exact type of each part of what the function received (as its info:
    ``_shape``, JSON), and return it unchanged."""
    import json

    pgbg.record_task_info(json.dumps(_shape(value)))
    return value


def record_info_times(times: int) -> int:
    """Record progress ``times`` times (the same statements again and again)."""
    for i in range(times):
        pgbg.record_task_info(f"step {i}")
    return times


def connection_settings() -> dict[str, bool]:
    """What this task's own connections would do: LISTEN, prepare statements."""
    from pgbg import db

    return {"listen": db.listen_enabled(), "prepare": db.prepare_enabled()}
