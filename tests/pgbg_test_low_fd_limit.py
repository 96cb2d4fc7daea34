"""``python -m pgbg_test_low_fd_limit worker ...``: the pgbg CLI in a process whose soft
limit on open files is 64, as a tight ``ulimit -n`` would leave it."""

from __future__ import annotations

import resource

from pgbg.cli import main

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
main()
