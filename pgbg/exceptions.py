"""Every error pgbg raises on purpose is a ``PgbgError``.

Each subclass's docstring is its default message, so ``raise TaskNotFound()`` reads
well on its own and callers can pass a more specific message when they have one.
Errors that are also plain argument errors subclass ``TypeError``/``ValueError`` too,
so code written against the original module's behaviour still catches them.
"""

from __future__ import annotations


class PgbgError(Exception):
    """pgbg failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(PgbgError):
    """pgbg is not configured correctly."""


class DatabaseUnavailable(PgbgError):
    """The database could not be reached."""


class EmbeddedServerError(DatabaseUnavailable):
    """The embedded PostgreSQL server could not be started."""


class SchemaMissing(PgbgError):
    """The pgbg schema is missing or out of date: run `pgbg migrate`."""


class InvalidTaskFunction(PgbgError, TypeError):
    """A task function must be a module-level function importable by name."""


class NotAllowed(PgbgError):
    """not allowed: the function is outside this worker's allowed modules."""


class NotSerializable(PgbgError, TypeError):
    """Task arguments and results must be JSON-serialisable."""


class InvalidOption(PgbgError, ValueError):
    """An option passed to pgbg is not valid."""


class InvalidTaskId(PgbgError, ValueError):
    """A task id must be a UUID."""


class TaskNotFound(PgbgError, LookupError):
    """No task has that id."""


class PeriodicNotFound(PgbgError, LookupError):
    """No periodic task has that name."""


class InvalidTaskState(PgbgError):
    """The task is not in a state that allows this."""


class TaskAlreadyStarted(InvalidTaskState):
    """The task has already started, so it cannot be removed from the queue."""


class TaskFailed(PgbgError):
    """The task did not complete successfully."""

    def __init__(self, message: str | None = None, *, status: str = "failed",
                 error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class UnstorableValue(NotSerializable, ValueError):
    """The value cannot be stored in PostgreSQL and read back exactly."""


class OptionOutOfRange(InvalidOption):
    """An option is outside the range its database column holds."""


class DatabaseError(PgbgError):
    """The database refused the statement."""


class EnqueueFailed(DatabaseError):
    """The database refused to queue the task."""
