"""A task module whose import never returns (blocked on something that never comes)."""

import time

time.sleep(3600)


def run() -> str:
    return "never"
