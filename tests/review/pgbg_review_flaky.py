"""An --import module whose import fails once the file named by PGBG_REVIEW_FLAG exists."""

import os
from pathlib import Path

import pgbg

if Path(os.environ["PGBG_REVIEW_FLAG"]).exists():
    raise RuntimeError("the task module is broken now")


@pgbg.task(task_type="flaky")
def ok(x: int) -> int:
    return x + 1


@pgbg.task(task_type="flaky")
def block_until(path: str) -> str:
    import time

    while not Path(path).exists():
        time.sleep(0.05)
    return "released"
