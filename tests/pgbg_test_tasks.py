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


def record_info_times(times: int) -> int:
    """Record progress ``times`` times (the same statements again and again)."""
    for i in range(times):
        pgbg.record_task_info(f"step {i}")
    return times


def connection_settings() -> dict[str, bool]:
    """What this task's own connections would do: LISTEN, prepare statements."""
    from pgbg import db

    return {"listen": db.listen_enabled(), "prepare": db.prepare_enabled()}
