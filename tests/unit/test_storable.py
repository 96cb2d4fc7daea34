"""The storability rule and the exact JSON encoder (pgbg.storable), and retry arithmetic."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest

from pgbg import decisions, storable
from pgbg.exceptions import UnstorableValue
from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome


@pytest.mark.parametrize(("value", "text"), [
    (1e16, "10000000000000000.0"),
    (1.5e-07, "0.00000015"),
    (1.0, "1.0"),
    (-2.5, "-2.5"),
    ([1e22, {"a": 0.1}], '[10000000000000000000000.0, {"a": 0.1}]'),
    (10 ** 20, "100000000000000000000"),
    ({"k": [True, None, "é"]}, '{"k": [true, null, "\\u00e9"]}'),
])
def test_dumps_writes_every_float_positionally(value: Any, text: str) -> None:
    assert storable.dumps(value) == text
    assert json.loads(storable.dumps(value)) == value


def test_dumps_is_exact_for_extreme_floats() -> None:
    for value in (5e-324, 1e308, 1.7976931348623157e308, 2.2250738585072014e-308, math.pi):
        text = storable.dumps(value)
        assert "e" not in text.lower() and "." in text
        back = json.loads(text)
        assert type(back) is float and back == value


@pytest.mark.parametrize(("value", "message"), [
    ("a\x00b", "x: strings cannot hold NUL (\\x00)"),
    ("\udfff", "x: strings cannot hold a lone surrogate"),
    ({1: 2}, "x: key 1"),
    ({"ok": {"a\x00": 1}}, "x['ok']: key 'a\\x00'"),
    (-0.0, "x: -0.0"),
    (float("nan"), "x: nan"),
    (float("-inf"), "x: -inf"),
    (10 ** 4300, "x: an int of more than 4300 digits"),
    (object(), "x: object is not JSON-serialisable"),
    (b"bytes", "x: bytes is not JSON-serialisable"),
], ids=lambda v: type(v).__name__ if not isinstance(v, str) else None)
def test_check_json_refuses_naming_the_path(value: Any, message: str) -> None:
    with pytest.raises(UnstorableValue) as info:
        storable.check_json(value, "x")
    assert message in str(info.value)


def test_check_json_refuses_depth_and_cycles_without_recursing() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(UnstorableValue, match="nested deeper than"):
        storable.check_json(deep, "x")
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(UnstorableValue):
        storable.check_json(cycle, "x")


def test_check_json_accepts_what_round_trips() -> None:
    for value in (None, True, 0, -1, 10 ** 4300 - 1, 0.0, 1e308, "é\U0001f600", [],
                  {"a": [1, {"b": None}]}):
        storable.check_json(value, "x")


def _task(attempt: int, max_attempts: int, backoff: float | None) -> BackgroundTask:
    return BackgroundTask(id=uuid.uuid4(), task_type="t", func="m:f", args=[], kwargs={},
                          priority=0, status=TaskStatus.RUNNING, num_proc=0,
                          num_of_task_type={}, queued_at=None, started_at=None,
                          finished_at=None, worker_id=None, hostname=None, pid=None,
                          attempt=attempt, max_attempts=max_attempts, retry_backoff=backoff)


@pytest.mark.parametrize("backoff", [3600.0, 1e308, float("inf"), float("nan"), -5.0, None])
@pytest.mark.parametrize("jitter", [0.5, 1.5])
def test_retry_delay_never_overflows_nor_exceeds_the_cap(backoff: float | None,
                                                         jitter: float) -> None:
    task = _task(10_000, 2 ** 31 - 1, backoff)
    ended = Outcome(task.id, task.attempt, TaskStatus.FAILED, error="boom")
    delay = decisions.retry_delay(task, ended, error_exit=False, raised=[],
                                  default_backoff=1e308, jitter=lambda _lo, _hi: jitter)
    assert delay is not None and 0 <= delay <= decisions.MAX_BACKOFF


def test_retry_delay_still_doubles_per_attempt() -> None:
    delays = []
    for attempt in (1, 2, 3):
        task = _task(attempt, 10, 1.0)
        ended = Outcome(task.id, attempt, TaskStatus.FAILED)
        delays.append(decisions.retry_delay(task, ended, error_exit=False, raised=[],
                                            default_backoff=5, jitter=lambda _lo, _hi: 1.0))
    assert delays == [1.0, 2.0, 4.0]


def test_the_fast_scan_agrees_with_check_json() -> None:
    deep: Any = "x"
    for _ in range(storable.MAX_DEPTH + 1):
        deep = [deep]
    samples: list[Any] = [None, True, 1, 0.0, -0.0, 1e16, 1e-5, 0.1, float("nan"), "a\x00",
                          "\ud800", "é", 10 ** 4300, 10 ** 4300 - 1, (1,), [(1,)], {1: 2},
                          {"a\x00": 1}, {"é": [1.5]}, deep, deep[0], object()]
    for value in samples:
        try:
            storable.check_json(value, "x")
            refused = False
        except UnstorableValue:
            refused = True
        assert (storable.scan(((value,),)) is None) is refused, value
    assert storable.scan([(1, "a"), [2.5], {"k": 1e16}]) is True  # containers may be tuples
    assert storable.scan([(1, "a"), [2.5], {"k": 1e15}]) is False
