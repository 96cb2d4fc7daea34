"""The claim of migration 0014: the 64-group boundary (group mode at 64, walk mode at 65)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from pgbg import queries


def _insert(conn: psycopg.Connection[Any], task_type: str, limits: str, priority: int = 0,
            num_proc: int = 0, run_at: str | None = None) -> None:
    conn.execute(
        "INSERT INTO pgbg.task (id, task_type, func, priority, num_of_task_type, num_proc,"
        " run_at) VALUES (gen_random_uuid(), %s, 'pgbg_test_tasks:add', %s, %s::jsonb, %s,"
        " %s::timestamptz)", (task_type, priority, limits, num_proc, run_at))


@pytest.mark.parametrize("groups", [63, 64, 65, 66])
@pytest.mark.parametrize("scheduled", [False, True])
def test_every_group_is_claimed_at_the_boundary(conn: psycopg.Connection[Any],
                                                groups: int, scheduled: bool) -> None:
    """``groups`` groups of one due task each (half of them by num_proc), behind a
    scheduled head in each group when ``scheduled``; one claim takes them all, in order."""
    for i in range(groups):
        limits, num_proc = (f'{{"g{i}": 1}}', 0) if i % 2 else ("{}", 100 + i)
        if scheduled:
            _insert(conn, f"g{i}", limits, priority=50, num_proc=num_proc, run_at="tomorrow")
        _insert(conn, f"g{i}", limits, priority=i, num_proc=num_proc)
    _insert(conn, "free", "{}", priority=1000)
    got = queries.task_claim(conn, uuid.uuid4(), "test", 1000)
    assert [t.task_type for t in got] == ["free"] + [f"g{i}" for i in reversed(range(groups))]


@pytest.mark.parametrize("good", [60, 61], ids=["64-groups", "65-groups"])
def test_malformed_groups_count_toward_the_64_and_still_fail(
        conn: psycopg.Connection[Any], good: int) -> None:
    conn.execute("ALTER TABLE pgbg.task DROP CONSTRAINT task_num_of_task_type_valid")
    conn.execute("ALTER TABLE pgbg.task DROP CONSTRAINT task_num_proc_valid")
    for i in range(good):
        _insert(conn, f"g{i}", f'{{"g{i}": 1}}')
    _insert(conn, "bad", '{"x": 0}')
    _insert(conn, "bad", '{}', num_proc=-1)
    _insert(conn, "bad", '[1]')
    _insert(conn, "bad", '{"x": "1"}')
    got = queries.task_claim(conn, uuid.uuid4(), "test", 1000)
    assert sorted(t.task_type for t in got) == sorted(f"g{i}" for i in range(good))
    assert conn.execute("SELECT count(*) FROM pgbg.task WHERE task_type = 'bad'"
                        " AND status = 'failed'").fetchone() == (4,)


HOSTILE = ["a", "A", "á", "a\u0301", "ß", "ss", "SS", "\u00a0", " ", "", "\t", "-", "_", "ǅ",
           "ﬁ", "fi", "\u0130", "i", "\u0131", "\U0001f600", "\ufeff", "\u200b", "日本", "本日",
           "1", "01",
           "\\", '"', "'", "\x7f", "z" * 250]


def test_every_group_of_hostile_keys_is_found(conn: psycopg.Connection[Any]) -> None:
    """Keys that collations like to fold together (accents, case, ligatures, ignorables):
    the skip scan must find every one of the 62 groups, each a different limits text."""
    import json
    groups = []
    for k in HOSTILE:
        for suffix in ("", "x"):
            key = (k + suffix) or "empty"
            groups.append(json.dumps({key: 1}))
    assert len(set(groups)) == 62
    for i, g in enumerate(groups):
        _insert(conn, f"t{i}", g, priority=i)
    got = queries.task_claim(conn, uuid.uuid4(), "test", 1000)
    assert sorted(t.task_type for t in got) == sorted(f"t{i}" for i in range(62))
