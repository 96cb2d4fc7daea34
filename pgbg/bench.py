"""``pgbg bench``: measure pgbg on your own database, the way the peers were measured.

Every workload runs in a scratch database created next to the configured one (and dropped
afterwards), with a real ``pgbg worker`` process. Rates of the worker are read back from
the task rows (first start to last finish, database clock); latencies are taken on this
machine's clock, which the worker, its children and this process share.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

import pgbg
from pgbg import db, migrate
from pgbg.bench_tasks import block, noop, sleep_ms, started

# -- results -------------------------------------------------------------------------


@dataclass
class Sizes:
    enqueue_single: int = 2000
    enqueue_bulk: int = 20000
    process_noop: int = 3000
    process_sleep: int = 2000
    latency: int = 200
    terminate: int = 30
    wait: int = 100
    deep_queued: int = 200_000
    deep_finished: int = 1_000_000
    concurrency: int = 2
    backlog: int = 20_000  # queued {"import": 1} tasks ahead of the measured ones; 0: skip
    backlog_tasks: int = 1000
    backlog_concurrency: int = 4


@dataclass
class Report:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, workload: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append({"workload": workload, "value": round(value, 3), "unit": unit,
                          "note": note})


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """What /proc says a process has used: CPU seconds and minor page faults, its own and
    those of its children it has reaped."""

    cpu: float = 0.0
    faults: int = 0
    children_cpu: float = 0.0
    children_faults: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.cpu - other.cpu, self.faults - other.faults,
                     self.children_cpu - other.children_cpu,
                     self.children_faults - other.children_faults)


def _usage(pid: int | None) -> Usage:
    """``pid``'s usage; nothing if it is not a process of this machine we may read."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return Usage()
    # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime (ticks)
    return Usage((int(fields[11]) + int(fields[12])) / CLOCK_TICK, int(fields[7]),
                 (int(fields[13]) + int(fields[14])) / CLOCK_TICK, int(fields[8]))


def _fork_server_of(worker: int) -> int | None:
    try:
        children = open(f"/proc/{worker}/task/{worker}/children").read().split()
        return next((int(pid) for pid in children
                     if b"pgbg.forkserver" in open(f"/proc/{pid}/cmdline", "rb").read()), None)
    except OSError:
        return None


@dataclass
class Processes:
    """The processes a worker's task passes through, to tell where its CPU goes: the
    worker, its fork server and the children it reaped, the worker's database backend
    (only when the database runs on this machine, as the embedded one does)."""

    worker: int
    fork_server: int | None
    backend: int | None

    @classmethod
    def of(cls, scratch: Scratch, worker: int) -> Processes:
        rows = scratch.sql("SELECT pid FROM pg_stat_activity "
                           "WHERE application_name LIKE 'pgbg worker %'")
        backend = rows[0][0] if len(rows) == 1 else None
        try:
            if open(f"/proc/{backend}/comm").read().strip() != "postgres":
                backend = None
        except (OSError, TypeError):
            backend = None
        return cls(worker, _fork_server_of(worker), backend)

    def usage(self) -> dict[str, Usage]:
        return {"worker": _usage(self.worker), "fork server": _usage(self.fork_server),
                "backend": _usage(self.backend)}


def cpu_note(before: dict[str, Usage], after: dict[str, Usage], n: int) -> tuple[float, str]:
    """CPU ms per task in all the processes measured, and how it divides among them."""
    used = {name: after[name] - before[name] for name in before}
    worker, server, backend = used["worker"], used["fork server"], used["backend"]
    parts = {"worker": worker.cpu, "fork server": server.cpu,
             "children": server.children_cpu, "worker's backend": backend.cpu}
    total = sum(parts.values()) * 1000 / n
    note = ", ".join(f"{name} {cpu * 1000 / n:.2f}" for name, cpu in parts.items())
    note += (f" ms; page faults per task: fork server {server.faults / n:.0f}, "
             f"child {server.children_faults / n:.0f}")
    return total, note


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the scratch database ------------------------------------------------------------


def _scratch_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


class Scratch:
    """A database of its own for the run, dropped at the end."""

    def __init__(self) -> None:
        self.base = db.database_url()
        self.name = f"pgbg_bench_{os.getpid()}"
        self.url = _scratch_url(self.base, self.name)

    def __enter__(self) -> Scratch:
        with db.connect(self.base) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        migrate.upgrade(self.url)
        pgbg.configure(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        pgbg.configure()
        with db.connect(self.base) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def clear(self, task_type: str) -> None:
        """Delete a workload's tasks and vacuum, so the next workload starts on a clean
        table rather than sharing the machine with autovacuum cleaning up after this one."""
        self.sql("DELETE FROM pgbg.task WHERE task_type = %s", (task_type,))
        self.sql("VACUUM ANALYZE pgbg.task")

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        with db.connect(self.url) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


def _worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgbg", "worker", "--concurrency", str(concurrency),
         "--log-level", "warning", "--shutdown-timeout", "5"],
        env={**os.environ, "PGBG_DATABASE_URL": url}, stdin=subprocess.DEVNULL)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGTERM)  # the second request stops at once
        worker.wait(timeout=60)


def _wait_until(predicate: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out waiting for {what}")
        time.sleep(interval)
    return value


# -- workloads -----------------------------------------------------------------------


def enqueue_single(scratch: Scratch, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        pgbg.enqueue(noop, task_type="bench-enqueue")
    rate = n / (time.perf_counter() - began)
    scratch.clear("bench-enqueue")
    return rate


BULK_CALLS = 3


def enqueue_bulk(scratch: Scratch, n: int, calls: int = BULK_CALLS) -> float:
    """The median rate of ``calls`` calls of ``n`` tasks each (one call lasts a fraction
    of a second: a single one says more about the machine's moment than about pgbg)."""
    rates = []
    for _ in range(calls):
        began = time.perf_counter()
        pgbg.enqueue_many(noop, [()] * n, task_type="bench-enqueue")
        rates.append(n / (time.perf_counter() - began))
        scratch.clear("bench-enqueue")
    return statistics.median(rates)


def _wait_done(scratch: Scratch, ids: list[uuid.UUID], what: str) -> None:
    """Until every task of ``ids`` is complete: a count by primary key (a count by type
    would read every row of a deep queue each time, competing with what it measures),
    not so often that it competes for the CPU."""
    _wait_until(lambda: scratch.sql(
        "SELECT count(*) = %s FROM pgbg.task WHERE id = ANY(%s) AND complete",
        (len(ids), ids))[0][0], 600, what, interval=0.25)


def process(scratch: Scratch, func: Callable[..., Any], args: list[Any], n: int,
            task_type: str) -> float:
    """Tasks per second from the first start to the last finish (database clock)."""
    results = pgbg.enqueue_many(func, [args] * n, task_type=task_type)
    ids = [r.id for r in results]
    _wait_done(scratch, ids, f"{n} {task_type} tasks")
    (span,) = scratch.sql(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM pgbg.task "
        "WHERE id = ANY(%s)", (ids,))[0]
    scratch.clear(task_type)
    return n / float(span)


IMPORT_MS = 20  # what one "import" of the backlog workload does: sleep this long


@dataclass
class Backlog:
    empty: float  # unlimited no-ops per second on an empty queue (before and after)
    behind: float  # ... behind the backlog
    imports: int  # imports that ran while the no-ops ran behind them
    most_at_once: int  # the most imports that ever ran at once (their limit: 1)
    import_share: float  # of that time, the share an import was running


def backlog(scratch: Scratch, queued: int, n: int, concurrency: int) -> Backlog:
    """OpenREM's retrieve: ``queued`` imports limited to one at a time (``{"import": 1}``,
    priority 10) wait ahead of ``n`` unlimited no-op tasks. How fast do those run, against
    the same tasks on an empty queue, and do the imports keep running at their limit?"""
    worker = _worker(scratch.url, concurrency)
    try:
        _wait_until(lambda: scratch.sql("SELECT count(*) FROM pgbg.worker")[0][0], 60,
                    "the worker")
        before = process(scratch, noop, [], n, "bench-free")
        pgbg.enqueue_many(sleep_ms, [[IMPORT_MS]] * queued, task_type="bench-import",
                          priority=10, num_of_task_type={"bench-import": 1})
        _wait_until(lambda: scratch.sql(
            "SELECT count(*) FROM pgbg.task WHERE task_type = 'bench-import' AND "
            "status = 'running'")[0][0], 60, "the first import")
        ids = [r.id for r in pgbg.enqueue_many(noop, [[]] * n, task_type="bench-behind")]
        _wait_done(scratch, ids, f"{n} tasks behind the backlog")
        # the same again with the backlog gone: the machine's speed drifts, so the
        # empty-queue rate is the mean of one run before and one after
        scratch.sql("DELETE FROM pgbg.task WHERE task_type = 'bench-import' "
                    "AND status = 'queued'")
        after = process(scratch, noop, [], n, "bench-free")
    finally:
        _stop(worker)
    empty = (before + after) / 2
    (first, last), = scratch.sql(
        "SELECT min(started_at), max(finished_at) FROM pgbg.task WHERE id = ANY(%s)", (ids,))
    (span, imports, busy), = scratch.sql(
        "SELECT extract(epoch FROM %(last)s - %(first)s::timestamptz), count(*),"
        "       extract(epoch FROM coalesce(sum(least(finished_at, %(last)s)"
        "                                       - greatest(started_at, %(first)s)), '0 s'))"
        "  FROM pgbg.task WHERE task_type = 'bench-import' AND started_at < %(last)s"
        "   AND finished_at > %(first)s", {"first": first, "last": last})
    # the most imports running at one instant: +1 at each start, -1 at each finish
    (most,), = scratch.sql(
        "SELECT coalesce(max(running), 0) FROM ("
        "  SELECT sum(step) OVER (ORDER BY at, step) AS running FROM ("
        "    SELECT started_at AS at, 1 AS step FROM pgbg.task"
        "     WHERE task_type = 'bench-import' AND started_at IS NOT NULL"
        "    UNION ALL SELECT finished_at, -1 FROM pgbg.task"
        "     WHERE task_type = 'bench-import' AND finished_at IS NOT NULL) steps) overlap")
    for task_type in ("bench-free", "bench-behind", "bench-import"):
        scratch.clear(task_type)
    return Backlog(empty, n / float(span), imports, most,
                   float(busy) / float(span))


def latency(n: int) -> list[float]:
    """Enqueue → the task's function starts (seconds), one task at a time, idle worker."""
    samples = []
    for _ in range(n):
        before = time.time()
        result = pgbg.enqueue(started, task_type="bench-latency")
        samples.append(result.get(timeout=60) - before)
    return samples


def wait_wake(n: int) -> list[float]:
    """The task's function returns → ``wait_task`` returns, in the waiting process."""
    samples = []
    for _ in range(n):
        result = pgbg.enqueue(started, task_type="bench-wait")
        task = pgbg.wait_task(result, timeout=60)
        samples.append(time.time() - task.result)
    return samples


def _pid_of(result: pgbg.Result) -> int | None:
    return pgbg.get_task(result).pid


def terminate(scratch: Scratch, n: int) -> list[float]:
    """``terminate_background`` called → the task's process is gone (pidfd readable)."""
    samples = []
    for _ in range(n):
        result = pgbg.enqueue(block, task_type="bench-terminate")
        pid: int = _wait_until(partial(_pid_of, result), 60, "a blocking task")
        pidfd = os.pidfd_open(pid)
        try:
            began = time.perf_counter()
            pgbg.terminate_background(result, wait=False)
            select.select([pidfd], [], [], 60)
            samples.append(time.perf_counter() - began)
        finally:
            os.close(pidfd)
        pgbg.wait_task(result, timeout=60)
    return samples


FORK_PROBE = """
import os, sys, time
import {modules}
def rate(n):
    began = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return n / (time.perf_counter() - began)
rate(200)
rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]
print(max(rate(1000) for _ in range(3)), rss)
"""


def fork_ceiling(modules: str) -> tuple[float, int]:
    """Bare fork+exit+reap per second in a process that has imported ``modules`` (as the
    process that forks tasks has), and its RSS in kB."""
    out = subprocess.run([sys.executable, "-c", FORK_PROBE.format(modules=modules)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def fill_deep(scratch: Scratch, queued: int, finished: int) -> None:
    """History and backlog: finished rows, and queued rows behind everything (priority)."""
    scratch.sql(
        """INSERT INTO pgbg.task (id, task_type, func, status, attempt, started_at,
                                  finished_at)
           SELECT gen_random_uuid(), 'bench-history', 'pgbg.bench_tasks:noop', 'succeeded', 1,
                  now() - interval '1 day', now() - interval '1 day'
             FROM generate_series(1, %s)""", (finished,))
    scratch.sql(
        """INSERT INTO pgbg.task (id, task_type, func, priority)
           SELECT gen_random_uuid(), 'bench-backlog', 'pgbg.bench_tasks:noop', -1000
             FROM generate_series(1, %s)""", (queued,))
    scratch.sql("VACUUM ANALYZE pgbg.task")
    # Flush the fill now, so the measurement is of the queue and not of the checkpointer
    # writing out a million fresh rows beside our commits (needs the right privilege).
    with contextlib.suppress(psycopg.Error):
        scratch.sql("CHECKPOINT")


# -- the run ---------------------------------------------------------------------------


def run(sizes: Sizes, progress: Callable[[str], None] = lambda step: None) -> Report:
    report = Report()
    with Scratch() as scratch:
        progress("fork ceiling")
        ceiling, probe_rss = fork_ceiling("pgbg.forkserver, pgbg.bench_tasks")
        report.add("fork ceiling (the fork server)", ceiling, "forks/s",
                   f"RSS {probe_rss / 1024:.0f} MB: what forks each task")
        heavy, heavy_rss = fork_ceiling("pgbg.worker, pgbg.cli")
        report.add("fork ceiling (a worker-sized process)", heavy, "forks/s",
                   f"RSS {heavy_rss / 1024:.0f} MB: had the worker forked itself")
        progress("enqueue-single")
        single = enqueue_single(scratch, sizes.enqueue_single)
        report.add("enqueue-single", single, "tasks/s", "one transaction each")
        progress("enqueue-bulk")
        report.add("enqueue-bulk", enqueue_bulk(scratch, sizes.enqueue_bulk), "tasks/s",
                   f"{sizes.enqueue_bulk} in one call (median of {BULK_CALLS} calls)")
        worker = _worker(scratch.url, sizes.concurrency)
        try:
            _wait_until(lambda: scratch.sql("SELECT count(*) FROM pgbg.worker")[0][0], 60,
                        "the worker")
            rss_start = _rss_kb(worker.pid)
            progress("process-noop")
            processes = Processes.of(scratch, worker.pid)
            used_before = processes.usage()
            noop_rate = process(scratch, noop, [], sizes.process_noop, "bench-noop")
            cpu_total, cpu_split = cpu_note(used_before, processes.usage(), sizes.process_noop)
            report.add("process-noop", noop_rate, "tasks/s",
                       f"{noop_rate / heavy:.0%} of a worker-sized process's fork ceiling, "
                       f"{noop_rate / ceiling:.0%} of the fork server's; "
                       f"concurrency {sizes.concurrency}")
            report.add("process-noop CPU per task", cpu_total, "ms", cpu_split)
            progress("process-sleep-10ms")
            sleep_rate = process(scratch, sleep_ms, [10], sizes.process_sleep, "bench-sleep")
            ideal = sizes.concurrency * 100
            report.add("process-sleep-10ms", sleep_rate, "tasks/s", f"{sleep_rate / ideal:.0%} "
                       f"of ideal {ideal}/s")
            progress("latency")
            p50, p95, worst = _percentiles(latency(sizes.latency))
            report.add("latency enqueue → start p50", p50 * 1000, "ms")
            report.add("latency enqueue → start p95", p95 * 1000, "ms", f"max {worst * 1000:.1f}")
            progress("wait_task wake")
            p50, p95, worst = _percentiles(wait_wake(sizes.wait))
            report.add("wait_task wake p50", p50 * 1000, "ms",
                       f"p95 {p95 * 1000:.1f}, max {worst * 1000:.1f}")
            progress("terminate")
            p50, p95, worst = _percentiles(terminate(scratch, sizes.terminate))
            report.add("terminate → gone p50", p50 * 1000, "ms",
                       f"p95 {p95 * 1000:.1f}, max {worst * 1000:.1f}")
            processed = (sizes.process_noop + sizes.process_sleep + sizes.latency + sizes.wait
                         + sizes.terminate)
            rss_end = _rss_kb(worker.pid)
            report.add("worker RSS growth", (rss_end - rss_start) / 1024, "MB",
                       f"{rss_start / 1024:.0f} → {rss_end / 1024:.0f} MB over "
                       f"{processed} tasks (pgbg bench --rss-tasks N "
                       "for a longer run)")
        finally:
            _stop(worker)
        if sizes.backlog:
            progress("backlog")
            found = backlog(scratch, sizes.backlog, sizes.backlog_tasks,
                            sizes.backlog_concurrency)
            report.add("process-noop behind a limited backlog", found.behind, "tasks/s",
                       f"{found.behind / found.empty:.0%} of {found.empty:.0f}/s on an empty "
                       f"queue; {sizes.backlog} queued {{\"import\": 1}} tasks ahead; "
                       f"concurrency {sizes.backlog_concurrency}")
            report.add("imports meanwhile", found.imports, "tasks",
                       f"at most {found.most_at_once} at once (limit 1), one running "
                       f"{found.import_share:.0%} of the time; {IMPORT_MS} ms each")
        # The backlog must not be worked off while the deep rates are measured: no worker
        # runs during the fill and the enqueue; the measured tasks outrank the backlog.
        progress("deep queue")
        fill_deep(scratch, sizes.deep_queued, sizes.deep_finished)
        deep_single = enqueue_single(scratch, sizes.enqueue_single)
        report.add("deep enqueue-single", deep_single, "tasks/s",
                   f"{deep_single / single:.0%} of shallow")
        worker = _worker(scratch.url, sizes.concurrency)
        try:
            deep_noop = process(scratch, noop, [], sizes.process_noop, "bench-deep-noop")
        finally:
            _stop(worker)
        report.add("deep process-noop", deep_noop, "tasks/s",
                   f"{deep_noop / noop_rate:.0%} of shallow; {sizes.deep_queued} queued, "
                   f"{sizes.deep_finished} finished rows")
    return report


def rss_soak(tasks: int, concurrency: int,
             progress: Callable[[str], None] = lambda step: None) -> Report:
    """Worker memory over many tasks: RSS before and after ``tasks`` no-op tasks."""
    report = Report()
    with Scratch() as scratch:
        worker = _worker(scratch.url, concurrency)
        try:
            _wait_until(lambda: scratch.sql("SELECT count(*) FROM pgbg.worker")[0][0], 60,
                        "the worker")
            start = _rss_kb(worker.pid)
            done = 0
            while done < tasks:
                batch = min(20000, tasks - done)
                progress(f"rss soak {done}/{tasks}")
                process(scratch, noop, [], batch, f"bench-soak-{uuid.uuid4().hex[:6]}")
                done += batch
            end = _rss_kb(worker.pid)
            report.add("worker RSS growth", (end - start) / 1024, "MB",
                       f"{start / 1024:.1f} → {end / 1024:.1f} MB over {tasks} tasks")
        finally:
            _stop(worker)
    return report
