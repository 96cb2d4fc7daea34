"""The ``pgbg`` command. Each command is a thin wrapper over a library function.

Errors print one line and exit non-zero; no traceback reaches the user.
"""

import os
import sys

from pgbg.cli import periodic, run, tasks, top, web  # noqa: F401  (each registers its commands)
from pgbg.cli.common import app


def main() -> None:
    # Like `python -m` (and other queues' workers): the application in the current
    # directory is importable, by `pgbg worker` and by `pgbg enqueue`'s check alike.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app()
