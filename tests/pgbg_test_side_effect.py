"""A module with an import-time side effect: it leaves a file behind when imported."""

import os
from pathlib import Path

MARKER = os.environ.get("PGBG_TEST_MARKER")
if MARKER:
    Path(MARKER).write_text(f"imported by {os.getpid()}")


def run() -> str:
    return "ran"
