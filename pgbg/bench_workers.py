"""``pgbg bench --workers 1,2,4,8``: many worker processes on one database.

For each number of workers, three runs, each with fresh ``pgbg worker`` processes:

- *prefilled*: no-op tasks queued before the workers start; throughput from the task rows
  (first start to last finish, database clock), as ``bench.process`` measures it;
- *stream*: no-op tasks enqueued one per transaction, as fast as one client can, while the
  workers run;
- *idle*: one task at a time, each waited for before the next is queued: what a single
  enqueue costs when every worker is idle (the thundering herd).

Each reports the database server's CPU per task (utime + stime of the postmaster and all
its children, from ``/proc``, before and after; a server on another machine: not
measured) and the claim steps that came back short per task: calls of
``pgbg.task_next_due()``, which ``task_step`` makes exactly when a claim found fewer tasks
than it had slots for (an empty claim, a wasted wake-up, counts here), counted by
``track_functions`` in the scratch database and read after the workers have stopped
(a backend flushes its counts when it exits).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

import pgbg
from pgbg import db
from pgbg.bench import Report, Scratch, _stop, _wait_until, _worker
from pgbg.bench_tasks import noop

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# An idle backend flushes its function counts within a second (PostgreSQL's
# PGSTAT_MIN_INTERVAL): the workers' start-up steps are counted before the run starts.
STATS_SETTLE = 1.5


@dataclass
class WorkerSizes:
    counts: Sequence[int] = (1, 2, 4, 8)
    concurrency: int = 2
    prefilled: int = 2000
    stream: int = 1000
    idle: int = 100


@dataclass(frozen=True)
class Measured:
    tasks: int
    seconds: float  # first start to last finish, database clock
    server_cpu: float | None  # seconds of CPU of every server process
    steps: int | None  # calls of pgbg.task_step
    short_claims: int | None  # claims that found fewer tasks than free slots


# -- the server's CPU -------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def server_pids(scratch: Scratch) -> Callable[[], list[int]] | None:
    """A function listing the server's processes now (postmaster and children), or None
    if the server does not run on this machine."""
    with db.connect(scratch.url) as conn:  # open while its parent is looked up
        backend = conn.info.backend_pid
        try:
            postmaster = int(_stat(backend)[1])
            comm = Path(f"/proc/{postmaster}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
    if not comm.startswith("postgres"):
        return None

    def listed() -> list[int]:
        pids = [postmaster]
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                    if int(_stat(int(entry.name))[1]) == postmaster:
                        pids.append(int(entry.name))
        return pids

    return listed


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process still there, in seconds."""
    times = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = _stat(pid)
            times[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings by the processes alive at the second (one that exited
    in between is not counted; the workers' backends live through the whole run)."""
    return sum(spent - before.get(pid, 0.0) for pid, spent in after.items())


# -- counting steps ---------------------------------------------------------------------


def count_functions(scratch: Scratch) -> bool:
    """Count calls of PL/pgSQL functions in the scratch database (needs a superuser)."""
    try:
        scratch.sql(f'ALTER DATABASE "{scratch.name}" SET track_functions = \'pl\'')
    except psycopg.Error:
        return False
    return True


def function_calls(scratch: Scratch) -> dict[str, int]:
    rows = scratch.sql("SELECT funcname, calls FROM pg_stat_user_functions "
                       "WHERE schemaname = 'pgbg'")
    return {name: int(calls) for name, calls in rows}


# -- one run ------------------------------------------------------------------------------


def _start_workers(scratch: Scratch, n: int,
                   concurrency: int) -> list[subprocess.Popen[bytes]]:
    workers = [_worker(scratch.url, concurrency) for _ in range(n)]
    _wait_until(lambda: scratch.sql("SELECT count(*) FROM pgbg.worker")[0][0] == n, 60,
                f"{n} workers")
    return workers


def _done(scratch: Scratch, task_type: str, n: int) -> bool:
    return bool(scratch.sql("SELECT count(*) = %s FROM pgbg.task "
                            "WHERE task_type = %s AND complete", (n, task_type))[0][0])


def measure(scratch: Scratch, workers: int, concurrency: int, kind: str, tasks: int,
            counting: bool) -> Measured:
    """One run of ``kind`` (prefilled, stream, idle) with fresh worker processes."""
    task_type = f"bench-workers-{kind}"
    listed = server_pids(scratch)
    if kind == "prefilled":  # queued first: the workers' start-up is in the figures
        pgbg.enqueue_many(noop, [()] * tasks, task_type=task_type)
    else:  # the workers are up and idle first; their start-up is not in the figures
        procs = _start_workers(scratch, workers, concurrency)
        time.sleep(STATS_SETTLE)
    calls_before = function_calls(scratch) if counting else {}
    cpu_before = cpu_seconds(listed()) if listed else {}
    if kind == "prefilled":
        procs = _start_workers(scratch, workers, concurrency)
    try:
        if kind == "stream":
            for _ in range(tasks):
                pgbg.enqueue(noop, task_type=task_type)
        elif kind == "idle":
            for _ in range(tasks):
                pgbg.enqueue(noop, task_type=task_type).get(timeout=60)
        _wait_until(lambda: _done(scratch, task_type, tasks), 600, f"{tasks} {kind} tasks",
                    interval=0.25)
        server_cpu = cpu_used(cpu_before, cpu_seconds(listed())) if listed else None
    finally:
        for proc in procs:
            _stop(proc)
    calls = function_calls(scratch) if counting else {}
    (span,) = scratch.sql(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM pgbg.task "
        "WHERE task_type = %s", (task_type,))[0]
    scratch.clear(task_type)

    def delta(name: str) -> int | None:
        return calls.get(name, 0) - calls_before.get(name, 0) if counting else None

    return Measured(tasks, float(span), server_cpu, delta("task_step"),
                    delta("task_next_due"))


def run(sizes: WorkerSizes, progress: Callable[[str], None] = lambda step: None) -> Report:
    report = Report()
    with Scratch() as scratch:
        counting = count_functions(scratch)
        for n in sizes.counts:
            for kind, tasks in (("prefilled", sizes.prefilled), ("stream", sizes.stream),
                                ("idle", sizes.idle)):
                progress(f"{n} workers, {kind}")
                m = measure(scratch, n, sizes.concurrency, kind, tasks, counting)
                note = [f"{n} workers, concurrency {sizes.concurrency}, {tasks} tasks"]
                if m.server_cpu is not None:
                    note.append(f"DB CPU {m.server_cpu / tasks * 1e3:.2f} ms/task")
                if m.steps is not None and m.short_claims is not None:
                    note.append(f"steps {m.steps / tasks:.2f}/task, "
                                f"short claims {m.short_claims / tasks:.2f}/task")
                report.add(f"workers {n} {kind}", tasks / m.seconds, "tasks/s",
                           "; ".join(note))
    return report
