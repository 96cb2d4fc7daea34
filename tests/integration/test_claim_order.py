"""The claim of migration 0014: the claim against a reference walk of the queue.

One claimer, random queues: the claim must take exactly what walking the due queued rows in
claim order (priority DESC, queued_at, id), passing over those the limits block and
counting each task taken, would take. In group mode (<= 64 groups) and walk mode (> 64).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

from pgbg import queries

TYPES = ["a", "b", "c", "d"]


def _random_limits(rng: random.Random, groups: int) -> tuple[dict[str, int], int]:
    kind = rng.random()
    if kind < 0.25:
        return {}, 0
    if groups > 64 and kind < 0.6:  # many groups: one per customer
        c = f"cust-{rng.randrange(groups)}"
        return {c: rng.choice([1, 2])}, 0
    limits = {t: rng.choice([1, 2, 3]) for t in rng.sample(TYPES, rng.choice([0, 1, 1, 2]))}
    num_proc = rng.choice([0, 0, 0, 3, 5, 8])
    if not limits and not num_proc:
        num_proc = 4
    return limits, num_proc


def _allowed(limits: dict[str, int], num_proc: int, counts: Counter[str], total: int) -> bool:
    return (num_proc == 0 or total < num_proc) and all(counts[k] < n for k, n in limits.items())


def _build(conn: psycopg.Connection[Any], rng: random.Random, groups: int) -> list[dict[str, Any]]:
    rows = []
    base = "2026-01-01 00:00:00+00"
    for i in range(rng.randrange(20, 120)):
        limits, num_proc = _random_limits(rng, groups)
        if groups > 64 and i < groups:  # make sure there are > 64 groups
            limits, num_proc = {f"cust-{i}": 1}, 0
        r = rng.random()
        status = "queued" if r < 0.7 else ("running" if r < 0.9 else "failed-running")
        task_type = rng.choice([*TYPES, f"cust-{rng.randrange(max(groups, 1))}"])
        row = {
            "id": uuid.uuid4(), "task_type": task_type, "priority": rng.choice([0, 0, 1, 5]),
            # ties on queued_at are common: the id breaks them
            "queued_at_s": rng.choice([0, 1, 1, 2, 3]),
            "limits": limits, "num_proc": num_proc, "status": status,
            "run_at": rng.choice([None, None, None, "past", "future"]),
        }
        rows.append(row)
        conn.execute(
            "INSERT INTO pgbg.task (id, task_type, func, priority, queued_at, num_of_task_type,"
            " num_proc, status, started_at, finished_at, run_at) VALUES"
            " (%s, %s, 'pgbg_test_tasks:add', %s, %s::timestamptz + make_interval(secs => %s),"
            "  %s::jsonb, %s, %s::pgbg.task_status, CASE WHEN %s <> 'queued' THEN now() END,"
            "  NULL, CASE %s WHEN 'past' THEN now() - interval '1 hour'"
            "               WHEN 'future' THEN now() + interval '1 hour' END)",
            (row["id"], task_type, row["priority"], base, row["queued_at_s"],
             json.dumps(limits), num_proc,
             "failed" if status == "failed-running" else status, status, row["run_at"]))
    return rows


def _reference(rows: list[dict[str, Any]], p_max: int) -> list[uuid.UUID]:
    counts: Counter[str] = Counter(r["task_type"] for r in rows if r["status"] != "queued")
    total = sum(counts.values())
    due = [r for r in rows if r["status"] == "queued" and r["run_at"] != "future"]
    due.sort(key=lambda r: (-r["priority"], r["queued_at_s"], r["id"].bytes))
    taken = []
    for r in due:
        if len(taken) >= p_max:
            break
        if r["limits"] or r["num_proc"]:
            if not _allowed(r["limits"], r["num_proc"], counts, total):
                continue
        taken.append(r["id"])
        counts[r["task_type"]] += 1
        total += 1
    return taken


@pytest.mark.parametrize("groups", [0, 70], ids=["group-mode", "walk-mode"])
@pytest.mark.parametrize("seed", range(int(os.environ.get("REVIEW_SEEDS", "12"))))
def test_claim_matches_the_reference_walk(database_url: str, conn: psycopg.Connection[Any],
                                          seed: int, groups: int) -> None:
    rng = random.Random(seed * 1000 + groups)
    rows = _build(conn, rng, groups)
    p_max = rng.choice([1, 2, 4, 8, 100])
    expected = _reference(rows, p_max)
    with psycopg.connect(database_url) as claimer:
        got = [t.id for t in queries.task_claim(claimer, uuid.uuid4(), "test", p_max)]
        claimer.rollback()
    # as sets: the unlimited-only path returns its UPDATE's rows in no particular order
    assert sorted(map(str, got)) == sorted(map(str, expected)), (
        f"missing {sorted(map(str, set(expected) - set(got)))}, "
        f"extra {sorted(map(str, set(got) - set(expected)))}")
