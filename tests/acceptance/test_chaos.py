"""Fault injection over real workers, a real database and a ledger the tasks write.

While tasks run under limits, the run SIGKILLs and SIGSTOPs workers, terminates pgbg's
backends, restarts the database and stalls the task table with a lock, in an order drawn
from a seed (``PGBG_CHAOS_SEED`` replays one). Then a checker over the ledger and the rows
proves: no task lost, no attempt run twice, no two processes of a task at once, no
outcome lost, no limit exceeded, no process left behind.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest
from conftest import WorkerProcess, alive, wait_for

import pgbg
from pgbg import embedded, queries

SEED = int(os.environ.get("PGBG_CHAOS_SEED", "20261201"))
TASKS = 300
FAULTS = 16
LEASE = ("--heartbeat-interval", "0.3", "--lease", "3", "--poll-interval", "0.5")
LIMITS = {"lim": 2, "one": 1}  # task type -> how many may run at once



def quietly(probe: Callable[[], Any], default: Any = None) -> Any:
    try:
        return probe()
    except psycopg.OperationalError:
        return default  # the server is restarting


@pytest.mark.slow
def test_no_fault_breaks_a_promise(worker_process: Callable[..., WorkerProcess],
                                   database_url: str, tmp_path: Path) -> None:
    embedded_server = not os.environ.get("PGBG_TEST_DATABASE_URL")
    rng = random.Random(SEED)
    where = f"(seed {SEED}; replay with PGBG_CHAOS_SEED={SEED})"
    ids: list[uuid.UUID] = []
    for _ in range(TASKS):
        task_type = rng.choice(["lim", "one", "free", "free"])
        limit = LIMITS.get(task_type, 0)
        ids.append(pgbg.enqueue(
            tasks.chaos_step, [str(tmp_path), rng.uniform(0.01, 0.08) if rng.random() < 0.9
                               else rng.uniform(0.5, 2.5), limit],
            task_type=task_type, num_of_task_type={task_type: limit} if limit else None,
            max_attempts=30).id)
    workers = [worker_process(3, *LEASE) for _ in range(3)]
    stopped: list[WorkerProcess] = []
    done = lambda: quietly(lambda: _terminal(database_url, ids), 0)  # noqa: E731
    faults: list[str] = []
    for round_ in range(FAULTS):
        wait_for(lambda r=round_: done() >= (r + 1) * TASKS // (FAULTS + 2), timeout=240,
                 message=f"progress before fault {round_} {where}")
        fault = rng.choice(["kill", "stop", "backends", "restart", "lock"]
                           if embedded_server else ["kill", "stop", "backends", "lock"])
        faults.append(fault)
        if fault == "kill":
            victim = workers.pop(rng.randrange(len(workers)))
            victim.signal(signal.SIGKILL)
            victim.wait()
            workers.append(worker_process(3, *LEASE))
        elif fault == "stop":
            victim = rng.choice(workers)
            victim.signal(signal.SIGSTOP)
            stopped.append(victim)
            time.sleep(rng.uniform(0.5, 5))  # the fault itself: its lease may lapse meanwhile
            victim.signal(signal.SIGCONT)
        elif fault == "backends":
            _terminate_backends(database_url, rng)
        elif fault == "restart":
            pgbg.configure(database_url)  # drop the cached connection first
            embedded.restart()
        else:  # stall every write to the task table; kill the backends that wait on it
            with psycopg.connect(database_url) as c:
                c.execute("LOCK TABLE pgbg.task IN EXCLUSIVE MODE")
                time.sleep(rng.uniform(0.2, 1.5))  # the fault itself: writers wait meanwhile
                if rng.random() < 0.7:
                    _terminate_backends(database_url, rng)
                    time.sleep(rng.uniform(0.1, 1))
                c.rollback()
    wait_for(lambda: done() == TASKS, timeout=300, message=f"every task to end {where}")
    for worker in workers:
        worker.stop()
    _check(database_url, tmp_path, ids, where, faults)


def _terminate_backends(url: str, rng: random.Random) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        backends = [r[0] for r in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgbg%'")]
        for pid in rng.sample(backends, k=max(1, len(backends) // 2)) if backends else []:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _terminal(url: str, ids: list[uuid.UUID]) -> int:
    with psycopg.connect(url) as c:
        return queries.task_count_terminal(c, ids)


def _check(url: str, workdir: Path, ids: list[uuid.UUID], where: str,
           faults: list[str]) -> None:
    lines = [line.split() for line in (workdir / "ledger").read_text().splitlines()]
    kinds = Counter(line[0] for line in lines)
    overlaps = {line[1] for line in lines if line[0] == "overlap"}
    assert not overlaps, (f"two processes of one task at once {where}: faults {faults}; "
                          + "; ".join(" ".join(line) for line in lines if line[1] in overlaps))
    assert not kinds["excess"], f"a limit was exceeded {where}"
    starts = Counter((line[1], int(line[2])) for line in lines if line[0] == "start")
    assert max(starts.values()) == 1, f"an attempt ran twice {where}"
    ended = {(line[1], int(line[2])) for line in lines if line[0] == "end"}
    with psycopg.connect(url) as c:
        rows = {str(r[0]): r[1:] for r in c.execute(
            "SELECT id, status::text, attempt, result FROM pgbg.task WHERE id = ANY(%s)",
            (ids,))}
        logged = defaultdict(list)
        for task_id, message in c.execute(
                "SELECT task_id, message FROM pgbg.task_log WHERE task_id = ANY(%s)", (ids,)):
            logged[str(task_id)].append(message)
    assert len(rows) == len(ids), f"tasks lost {where}"
    statuses = Counter(status for status, _attempt, _result in rows.values())
    assert set(statuses) == {"succeeded"}, f"{statuses} {where}"
    for task_id, (_status, attempt, result) in rows.items():
        assert result == f"{task_id}:{attempt}", f"outcome of another attempt {where}"
        assert (task_id, attempt) in ended, f"succeeded without its run ending {where}"
        ran = sorted(a for t, a in starts if t == task_id)
        assert ran and ran[-1] == attempt, f"{task_id} ran {ran}, row says {attempt} {where}"
        # every earlier attempt that ran is accounted for in the task's log
        for earlier in ran[:-1]:
            assert any(f"attempt {earlier}" in m for m in logged[task_id]), (
                f"{task_id}: attempt {earlier} ran and vanished {logged[task_id]} {where}")
    pids = {int(line[3]) for line in lines}
    assert not [pid for pid in pids if alive(pid)], f"processes left behind {where}"
    print(f"chaos {where}: {len(ids)} tasks, {sum(starts.values())} runs, faults {faults}")
