"""A task module whose import raises."""

raise ValueError("broken at import")


def run() -> str:
    return "never"
