"""Bad input inside a caller's open transaction: a PgbgError, and the transaction stays
usable (nothing of it was sent to the database)."""

from __future__ import annotations

import secrets
from typing import Any

import pgbg_test_tasks as tasks
import psycopg
import pytest

import pgbg
from pgbg.exceptions import PgbgError

LONG = secrets.token_hex(8000)  # random: no compression gets it into an index row
CASES: dict[str, dict[str, Any]] = {
    "task_type NUL": {"task_type": "a\x00b"},
    "task_type surrogate": {"task_type": "a\ud800b"},
    "task_type empty": {"task_type": ""},
    "task_type long": {"task_type": "x" * 300000},
    "task_type long random": {"task_type": LONG},
    "limit key NUL": {"task_type": "t", "num_of_task_type": {"a\x00": 1}},
    "limit key surrogate": {"task_type": "t", "num_of_task_type": {"a\ud800": 1}},
    "limit key long": {"task_type": "t", "num_of_task_type": {LONG: 1}},
    "limits long": {"task_type": "t",
                    "num_of_task_type": {f"{i:0>250}": 1 for i in range(9)}},
    "unique_key long": {"task_type": "t", "unique_key": LONG},
    "priority past int": {"task_type": "t", "priority": 2 ** 31},
    "num_proc past int": {"task_type": "t", "num_proc": 2 ** 31},
    "retry_on NUL": {"task_type": "t", "retry_on": ["a\x00"], "max_attempts": 2},
    "kwargs key NUL": {"task_type": "t", "kwargs": {"a\x00": 1}},
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_leaves_the_caller_transaction_usable(database_url: str, name: str) -> None:
    options = dict(CASES[name])
    args = options.pop("args", (1, 2))
    kwargs = options.pop("kwargs", None)
    with psycopg.connect(database_url) as caller:
        caller.execute("SELECT 1")  # a transaction is open
        with pytest.raises(PgbgError):
            pgbg.enqueue(tasks.add, args, kwargs, connection=caller, **options)
        assert caller.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert caller.execute("SELECT count(*) FROM pgbg.task").fetchone() == (0,)
