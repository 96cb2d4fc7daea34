"""``@pgbg.task``: declare a function as a task once, with its defaults; queue it by a
method on it.

    @pgbg.task(task_type="import", num_of_task_type={"import": 1}, max_attempts=3)
    def import_study(path: str) -> int: ...

    import_study.enqueue("/data/1.dcm")                         # the task's own arguments
    import_study.using(priority=9, connection=session).enqueue("/data/2.dcm")
    await import_study.aenqueue("/data/3.dcm")

The options are ``enqueue``'s, checked when the function is decorated: a bad one raises
``InvalidOption`` (or the ``PgbgError`` naming what is wrong) there, not at the first call.
``task_type`` defaults to ``module.qualname``. The function stays callable as before.

Every declared function is recorded here by its ``module:qualname``: a worker started with
``--registered-only`` (and ``--import`` for the modules that declare them) runs only
those, and refuses any other name without importing anything.

No imports beyond the standard library at module level: the fork server and every child
load this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    from pgbg.api import Result

P = ParamSpec("P")
R = TypeVar("R")

# enqueue's options a declaration may set (``connection`` and ``run_at`` only per call).
OPTIONS = ("task_type", "priority", "num_proc", "num_of_task_type", "timeout",
           "max_attempts", "delay", "unique_key", "unique_while_running", "retry_on",
           "retry_backoff")
PER_CALL = ("connection", "run_at")
MANY_SKIPS = ("unique_key", "unique_while_running")  # enqueue_many's tasks share no key

_declared: dict[str, Task[Any, Any]] = {}  # by "module:qualname"


class Task(Generic[P, R]):
    """A function declared with ``@pgbg.task``: callable as the function itself, with
    ``enqueue``, ``enqueue_many``, ``aenqueue``, ``aenqueue_many`` and ``using``."""

    def __init__(self, func: Callable[P, R], options: Mapping[str, Any],
                 connection: Any = None) -> None:
        from pgbg import api  # here: importing a task module stays cheap until it is used

        self.func = func
        self.name = api.function_name(func)  # "module:qualname", as the row stores it
        self.options: Mapping[str, Any] = dict(options)
        self.connection = connection
        queued = {k: v for k, v in self.options.items() if k != "connection"}
        api.prepare_enqueue(func, **queued)  # every option checked now, nothing written
        functools.update_wrapper(self, func)

    @property
    def task_type(self) -> str:
        return str(self.options["task_type"])

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pgbg task {self.name} task_type={self.task_type!r}>"

    def using(self, **options: Any) -> Task[P, R]:
        """A copy with some options overridden (``connection=`` too: the caller's
        transaction, a psycopg or SQLAlchemy connection or session); checked now."""
        _check_names(options, OPTIONS + PER_CALL)
        connection = options.pop("connection", self.connection)
        return Task(self.func, {**self.options, **options}, connection)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Result:
        """Queue ``func(*args, **kwargs)`` with this declaration's options."""
        from pgbg import api

        return api.enqueue(self.func, args, kwargs, connection=self.connection,
                           **self.options)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Result:
        """``enqueue``, awaitable (``pgbg.aio``; ``connection`` an async one)."""
        from pgbg import aio

        return await aio.enqueue(self.func, args, kwargs, connection=self.connection,
                                 **self.options)

    def enqueue_many(self, args_list: Sequence[Sequence[Any]],
                     kwargs_list: Sequence[Mapping[str, Any]] | None = None) -> list[Result]:
        """Queue one task per argument set, all or none (``pgbg.enqueue_many``)."""
        from pgbg import api

        return api.enqueue_many(self.func, args_list, kwargs_list,
                                connection=self.connection, **self._many_options())

    async def aenqueue_many(self, args_list: Sequence[Sequence[Any]],
                            kwargs_list: Sequence[Mapping[str, Any]] | None = None
                            ) -> list[Result]:
        """``enqueue_many``, awaitable."""
        from pgbg import aio

        return await aio.enqueue_many(self.func, args_list, kwargs_list,
                                      connection=self.connection, **self._many_options())

    def _many_options(self) -> dict[str, Any]:
        from pgbg.exceptions import InvalidOption

        if self.options.get("unique_key") is not None:
            raise InvalidOption(f"{self.name} has a unique_key, which names one task: "
                                "queue it with enqueue, not enqueue_many")
        return {k: v for k, v in self.options.items() if k not in MANY_SKIPS}


@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(func: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(func: Callable[P, R] | None = None, /, **options: Any
         ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare ``func`` a task, with ``enqueue``'s options as its defaults
    (``@pgbg.task`` or ``@pgbg.task(task_type=..., priority=..., ...)``)."""
    from pgbg.exceptions import InvalidOption

    _check_names(options, OPTIONS)
    if func is not None and not callable(func):
        raise InvalidOption(f"@pgbg.task decorates a function, not {type(func).__name__}; "
                            "pass options by name: @pgbg.task(task_type=...)")

    def declare(function: Callable[P, R]) -> Task[P, R]:
        if isinstance(function, Task):
            raise InvalidOption(f"{function.name} is declared with @pgbg.task already")
        module = getattr(function, "__module__", None)
        qualname = getattr(function, "__qualname__", None)
        owner = qualname.split(".")[-2:-1] if isinstance(qualname, str) else []
        if owner and owner != ["<locals>"]:  # "Class.method", maybe nested in a function
            from pgbg.exceptions import InvalidTaskFunction

            raise InvalidTaskFunction(
                f"{qualname} is defined in a class: a worker would call it without an "
                "instance; declare a module-level function as the task")
        defaults = {"task_type": f"{module}.{qualname}"} if module and qualname else {}
        declared = Task(function, {**defaults, **options})
        _declared[declared.name] = declared
        return declared

    return declare(func) if func is not None else declare


def declared(name: str) -> Task[Any, Any] | None:
    """The task declared as ``module:qualname``, if any (imports nothing)."""
    return _declared.get(name)


def register(name: str, target: Any) -> None:
    """Record another framework's task object (a ``django.tasks`` task of pgbg's backend)
    as declared under ``module:qualname``: ``--registered-only`` runs it too. The first
    one recorded under a name stays (its ``.using()`` copies run the same function)."""
    _declared.setdefault(name, target)


def declared_names() -> list[str]:
    return sorted(_declared)


def _check_names(options: Mapping[str, Any], known: Sequence[str]) -> None:
    from pgbg.exceptions import InvalidOption

    for name in options:
        if name in PER_CALL and name not in known:
            raise InvalidOption(f"{name}= belongs to one call, not to the declaration: "
                                f"use .using({name}=...).enqueue(...)")
        if name not in known:
            raise InvalidOption(f"@pgbg.task has no option {name!r}; the options are: "
                                f"{', '.join(known)}")
