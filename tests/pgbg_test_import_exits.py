"""A task module that exits at import (as one parsing sys.argv might)."""

import sys

sys.exit(3)


def run() -> str:
    return "never"
