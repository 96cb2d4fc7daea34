"""A task module whose import raises a BaseException that is not an Exception."""

raise KeyboardInterrupt


def run() -> str:
    return "never"
