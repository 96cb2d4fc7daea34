"""Property (issue 12 F): every value is refused at enqueue, writing nothing, or reaches the
task function exactly and comes back exactly as its result.

"Exactly" is ``same``: equal and of the same type at every node, so 1 is not 1.0, -0.0
is not 0.0 (a tuple is a JSON array: it arrives as a list). The task
(``pgbg_test_tasks.received``) returns what it got and records the exact type of each
part of it as its info, so the test sees what the function received, not only what was
stored. Examples are generated (derandomized: a failure replays) and queued by
Hypothesis; then one in-process worker runs them in a batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
from conftest import Driver, count_tasks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgbg


def same(a: Any, b: Any) -> bool:
    """Equal with the same type at every node (floats by repr: -0.0, nan); a tuple sent is
    a JSON array, so it arrives as a list."""
    a, b = (list(x) if type(x) is tuple else x for x in (a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


ANY_CHAR = st.characters(exclude_categories=())  # every code point: NUL, lone surrogates too
TEXT = st.one_of(st.text(max_size=12), st.text(ANY_CHAR, max_size=6),
                 st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\udfff x", "\U0001f600",
                                  "\\u0000", "é", "\u2028"]))
# Ints past 4300 digits are built from their size: Hypothesis cannot repr one as a bound.
DIGITS = st.one_of(st.integers(1, 40), st.integers(4295, 4305), st.integers(1, 5000))
INTS = st.one_of(st.integers(), st.sampled_from([2 ** 31, 2 ** 63, -(2 ** 63) - 1]),
                 st.builds(lambda digits, low, negative: (-1 if negative else 1)
                           * (10 ** (digits - 1) + low), DIGITS, st.integers(0, 10 ** 6),
                           st.booleans()))
FLOATS = st.one_of(st.floats(), st.floats(allow_subnormal=True, min_value=-1e-300,
                                          max_value=1e-300),
                   st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 5e-324, -0.0, 0.0,
                                    1e16, 1e22, 0.1, float("nan"), float("inf"),
                                    float("-inf")]))
LEAVES = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
KEYS = st.one_of(TEXT, TEXT, st.integers(-5, 5), st.none(), st.booleans(), st.floats())
VALUES = st.one_of(
    st.recursive(LEAVES, lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4),
        st.lists(children, max_size=3).map(tuple)), max_leaves=12),
    st.integers(min_value=190, max_value=210).map(nest),  # across pgbg's depth limit
)


def test_every_value_is_refused_or_round_trips_exactly(
        make_worker: Callable[..., Driver], conn: psycopg.Connection[Any]) -> None:
    accepted: list[tuple[Any, pgbg.Result]] = []
    refused: list[str] = []

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(value=VALUES, as_kwarg=st.booleans())
    def enqueue(value: Any, as_kwarg: bool) -> None:
        before = count_tasks(conn)
        try:
            if as_kwarg:
                result = pgbg.run_in_background(tasks.received, "prop", value=value)
            else:
                result = pgbg.enqueue(tasks.received, [value], task_type="prop")
        except pgbg.PgbgError as exc:
            assert isinstance(exc, (TypeError, ValueError))
            assert count_tasks(conn) == before  # nothing written
            refused.append(str(exc))
            return
        accepted.append((value, result))

    enqueue()
    assert len(accepted) >= 30, (len(accepted), refused[:10])  # the property is not vacuous
    assert len(refused) >= 10  # and the generator reaches what must be refused

    make_worker(2).until_done(*(result for _value, result in accepted), timeout=120)
    for value, result in accepted:
        task = pgbg.get_task(result)
        assert task.status is pgbg.TaskStatus.SUCCEEDED, (value, task.error)
        stored = task.kwargs["value"] if task.kwargs else task.args[0]
        assert same(stored, value), (value, stored)  # stored exactly
        assert task.info is not None and json.loads(task.info) == tasks._shape(value), (
            value, task.info)  # the function received it exactly
        assert same(task.result, value), (value, task.result)  # and it came back exactly
