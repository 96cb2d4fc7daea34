"""A real worker process whose periodic tasks fall due by a clock the test moves.

    python -m pgbg_test_clock_worker --clock FILE [--concurrency N] [--poll-interval S] [--lease S]

``FILE`` holds an ISO-8601 time; the test replaces it (atomically) to move time on. Only
the periodic scheduler reads it: everything else runs on the real clocks.
"""

from __future__ import annotations

import argparse
import logging
import signal
from datetime import datetime
from pathlib import Path

import pgbg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clock", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--log-level", default="info")
    options = parser.parse_args()
    logging.basicConfig(level=options.log_level.upper())
    worker = pgbg.Worker(options.concurrency, poll_interval=options.poll_interval,
                         lease=options.lease, heartbeat_interval=options.heartbeat_interval,
                         clock=lambda: datetime.fromisoformat(options.clock.read_text()))
    signal.signal(signal.SIGTERM, lambda _signum, _frame: worker.stop())
    worker.run()


if __name__ == "__main__":
    main()
