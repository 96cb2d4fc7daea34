"""What the worker decides about a task, as pure functions: no I/O, no clock of their own.

How an attempt ended (from the worker's kill, the child's report, or its exit status),
whether and when a failed attempt runs again, and whether this worker may run a function
at all. The worker loop calls these; their tests need neither a database nor a fork.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Sequence
from typing import Any

from pgbg.allowlist import dotted, module_allowed
from pgbg.models import BackgroundTask, TaskStatus
from pgbg.queries import Outcome

MAX_BACKOFF = 3600.0  # seconds: the longest a retry waits


def allowed(func: str, allow: Sequence[str] | None) -> bool:
    """May a worker limited to the module prefixes ``allow`` (None: any) run ``func``?

    The worker's pre-check, on the name alone: ``module:qualname`` with both parts dotted
    identifiers, the module within ``allow``. What the name resolves to is checked where it
    is resolved, in the child (``child.resolve``): a function defined in an allowed module.
    """
    if allow is None:
        return True
    module, colon, qualname = func.partition(":")
    return bool(colon) and dotted(module) and dotted(qualname) and module_allowed(module, allow)


def outcome(task: BackgroundTask, *, killed_by: str | None, kill_status: TaskStatus,
            report: dict[str, Any] | None, error_exit: bool, code: int | None,
            sig: int | None) -> Outcome:
    """How the attempt ended: the worker's kill first, then the child's own report, then
    its exit code or signal."""
    if killed_by is not None:
        return Outcome(task.id, task.attempt, kill_status, error=killed_by, exit_code=code,
                       signal=sig)
    if report:
        return Outcome(task.id, task.attempt, TaskStatus(report["status"]),
                       result=report.get("result"), error=report.get("error"), exit_code=code,
                       signal=sig, error_exit_recorded=error_exit)
    # No report: the child was killed, or left through os._exit before reporting.
    if sig is not None:
        error = f"killed by signal {signal.Signals(sig).name}"
        return Outcome(task.id, task.attempt, TaskStatus.FAILED, error=error, signal=sig,
                       error_exit_recorded=error_exit)
    if code == 0:
        return Outcome(task.id, task.attempt, TaskStatus.SUCCEEDED, exit_code=0,
                       error_exit_recorded=error_exit)
    return Outcome(task.id, task.attempt, TaskStatus.FAILED, error=f"exited with code {code}",
                   exit_code=code, error_exit_recorded=error_exit)


def retry_delay(task: BackgroundTask, ended: Outcome, *, error_exit: bool,
                raised: Sequence[str], default_backoff: float,
                jitter: Callable[[float, float], float] = random.uniform) -> float | None:
    """Seconds until a failed attempt runs again, or None: no retry. Never after the task
    recorded its own failure, nor after a termination someone asked for. ``raised``: the
    exception classes the attempt raised (``retry_on`` matches any of them)."""
    if (ended.status is not TaskStatus.FAILED or error_exit
            or task.attempt >= task.max_attempts):
        return None
    if task.retry_on is not None and not set(raised) & set(task.retry_on):
        return None
    return backoff(task.retry_backoff, default_backoff, task.attempt, jitter(0.5, 1.5))


MAX_DOUBLINGS = 64  # 2**64 times any backoff worth waiting is past MAX_BACKOFF already


def backoff(base: float | None, default: float, attempt: int, factor: float) -> float:
    """``base`` (None: ``default``) doubled per attempt after the first, times ``factor``,
    within [0, MAX_BACKOFF]. Never overflows, whatever a row holds: the exponent is capped
    and a base that is negative, NaN or past MAX_BACKOFF is brought into range first."""
    value = default if base is None else base
    if not 0 <= value <= MAX_BACKOFF:  # NaN fails both comparisons
        value = MAX_BACKOFF if value > MAX_BACKOFF else 0.0
    if not 0 <= factor <= 2:
        factor = 1.0
    doublings = min(max(attempt - 1, 0), MAX_DOUBLINGS)
    return float(min(MAX_BACKOFF, value * float(2 ** doublings) * factor))
