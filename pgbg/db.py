"""Which database pgbg uses, and connections to it.

Resolution order: ``configure(url=... | engine=...)`` > ``PGBG_DATABASE_URL`` >
``DATABASE_URL`` > the user's embedded server (started on first use).

Fork safety: a forked child must never use, or even close, a connection it inherited —
closing one sends a Terminate message on the parent's socket. Connections cached here are
per process; in a child the inherited ones are parked (kept referenced, never closed) and
fresh ones are opened on demand.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgbg import context
from pgbg.exceptions import ConfigurationError, DatabaseUnavailable, SchemaMissing

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_explicit_url: str | None = None
_listen: bool | None = None  # None: from PGBG_NO_LISTEN
_resolved_url: str | None = None
_lock = threading.Lock()
_shared: psycopg.Connection[Any] | None = None
_shared_pid: int | None = None
_inherited: list[Any] = []  # connections a forked child must keep but never touch
_provider: Callable[[], Any] | None = None  # use_connection's
_scope: Callable[[Any], AbstractContextManager[Any]] | None = None  # and its scope
_configured = 0  # configure() calls
# wait_task's connection is pgbg/waiters.py's: one per process, whatever the waiters.
try:
    VERSION = _metadata.version("pgbg")
except _metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
    VERSION = "unknown"
NAME_LIMIT = 63  # bytes of application_name PostgreSQL keeps


def versioned_name(name: str) -> str:
    """``name`` and pgbg's version, as every pgbg connection shows itself in
    ``pg_stat_activity`` (``pgbg doctor`` compares the workers' versions)."""
    suffix = f" v{VERSION}"
    return name.encode()[:NAME_LIMIT - len(suffix.encode())].decode(errors="ignore") + suffix


def configure(url: str | None = None, *, engine: Engine | None = None,
              listen: bool | None = None) -> None:
    """Point pgbg at a database explicitly (a URL, or the application's SQLAlchemy engine).

    ``listen=False``: poll instead of LISTEN (behind a transaction-pooling PgBouncer, where
    LISTEN does not work); default from ``PGBG_NO_LISTEN``. Call with no arguments to go
    back to the environment / embedded default.
    """
    global _explicit_url, _resolved_url, _listen, _configured
    _listen = listen
    if url is not None and engine is not None:
        from pgbg.exceptions import ConfigurationError

        raise ConfigurationError("pass either url= or engine=, not both")
    if engine is not None:
        url = engine.url.render_as_string(hide_password=False)
    with _lock:
        _explicit_url = libpq_url(url) if url else None
        _resolved_url = None
        _drop_shared()
        _configured += 1
    from pgbg import waiters  # imports this module

    waiters.stop()  # its connection is to the database configured before


def use_connection(provider: Callable[[], Any] | None,
                   scope: Callable[[Any], AbstractContextManager[Any]] | None = None) -> None:
    """Make pgbg's API join an application's transactions by default (Django's, say).

    ``provider()`` is called by each call of ``enqueue``, ``enqueue_many``,
    ``run_in_background*``, ``get_task`` and ``get_queued_tasks`` made without
    ``connection=``: it returns the connection to run on (inside its transaction), or None
    for pgbg's own connection, committed at once. Waiting, removing and terminating never
    join it: they act at once. ``None`` removes the provider.

    ``scope(connection)``, if given, is entered around each of pgbg's operations on the
    provider's connection: Django's ``atomic()`` there makes it a savepoint, so a failed
    statement of pgbg's leaves the application's transaction usable.
    """
    global _provider, _scope
    _provider = provider
    _scope = scope if provider is not None else None


def caller_connection() -> Any:
    """The connection ``use_connection``'s provider gives now, or None."""
    return _provider() if _provider is not None else None


def caller_scope(connection: Any) -> AbstractContextManager[Any]:
    """``use_connection``'s scope around an operation on ``connection``, else nothing."""
    return _scope(connection) if _scope is not None else nullcontext()


def configured() -> int:
    """How many times ``configure`` ran: a connection made before it is to the old database."""
    return _configured


def park(conn: Any) -> None:
    """In a forked child: keep the parent's connection referenced, never use or close it
    (closing it would end the parent's session)."""
    _inherited.append(conn)


def listen_enabled() -> bool:
    """Whether pgbg may LISTEN (else it polls): ``configure(listen=)``, else the absence of
    ``PGBG_NO_LISTEN=1``."""
    if _listen is not None:
        return _listen
    return os.environ.get("PGBG_NO_LISTEN", "").lower() not in ("1", "true", "yes")


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs too (``postgresql+psycopg://``)."""
    return re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url)


def database_url() -> str:
    """The URL pgbg connects to, starting the embedded server if that is the choice."""
    global _resolved_url
    if _explicit_url:
        return _explicit_url
    if context.database_url:  # in a task: the worker's, inherited in memory
        return context.database_url
    env = os.environ.get("PGBG_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if env:
        return libpq_url(env)
    if _resolved_url is None:
        from pgbg import embedded

        srv, _started = embedded.ensure_running()
        _resolved_url = srv.url
    return _resolved_url


def url_source() -> str:
    if _explicit_url:
        return "configure()"
    if context.database_url:
        return "the worker"
    if os.environ.get("PGBG_DATABASE_URL"):
        return "PGBG_DATABASE_URL"
    if os.environ.get("DATABASE_URL"):
        return "DATABASE_URL"
    return "embedded"


# The user info of a URL ends at the token's last "@" (a password may hold "@", ":", "/").
_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^:/?#@\s]*):(?P<pw>\S*)@")
# password= as a conninfo keyword or a URL parameter: quoted ('a b', with \' escapes, or
# "a b"), or bare up to a space or "&". sslpassword and PGPASSWORD too.
_PASSWORD_PARAM = re.compile(
    r"(?P<head>(?<![\w])(?:ssl|pg)?password\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^&\s'\"]+)", re.I)


def mask_url(url: str) -> str:
    """The URL (or conninfo string, or any text naming one) with every password replaced
    by ``***``, and the value of ``PGPASSWORD`` wherever it appears; safe to print and log."""
    url = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}:***@" if m["pw"] else m[0], url)
    url = _PASSWORD_PARAM.sub(lambda m: f"{m['head']}***", url)
    secret = os.environ.get("PGPASSWORD", "")
    return url.replace(secret, "***") if len(secret) >= 3 else url


def without_password(url: str) -> str:
    """``url`` (or a conninfo string) with no password in it, for an environment variable:
    whatever reads it connects as the same user and finds the password elsewhere (the
    password file, ``PGPASSWORD``) or not at all."""
    url = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}@", url)
    url = re.sub(r"(?<=[?&])(?:ssl)?password=[^&]*(?:&|$)", "", url, flags=re.I)
    url = re.sub(r"[?&]$", "", url)
    return _PASSWORD_PARAM.sub("", url).strip()


# TCP keepalives and a user timeout on every connection pgbg opens: a peer that vanished
# (host down, cable cut, NAT state lost) is noticed in about 10 s, well within the worker's
# default lease of 30 s, instead of after the kernel's two hours. libpq ignores them on a
# Unix socket; a URL that sets any of them keeps its own value.
KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
             "keepalives_count": "3", "tcp_user_timeout": "10000"}


def prepare_enabled() -> bool:
    """Whether pgbg's connections may prepare statements server-side: not when
    ``PGBG_PREPARE=0``, nor in poll-only mode (``PGBG_NO_LISTEN=1`` /
    ``configure(listen=False)``), which is what a transaction-pooling PgBouncer needs:
    a statement prepared in one transaction would be missing, or already there, on the
    server connection the next transaction lands on."""
    explicit = os.environ.get("PGBG_PREPARE", "").lower()
    if explicit in ("0", "false", "no"):
        return False
    if explicit in ("1", "true", "yes"):
        return True
    return listen_enabled()


def connect(url: str | None = None, *, autocommit: bool = True,
            application_name: str = "pgbg",
            prepare: bool | None = None) -> psycopg.Connection[Any]:
    """A new connection; failures become ``DatabaseUnavailable`` naming the masked URL.

    It holds no session state a transaction-pooling PgBouncer could lose: statements are
    prepared only while ``prepare_enabled()`` (or as ``prepare`` says), and nothing is SET.
    Its transactions start with ``BEGIN ISOLATION LEVEL READ COMMITTED`` whatever the
    server's default (pgbg's claim is correct only there); autocommit statements that need
    it go through ``read_committed``.
    """
    target, options = connect_options(url, autocommit, application_name, prepare)
    with unavailable(target):
        conn = psycopg.connect(target, **options)
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return conn


def connect_options(url: str | None, autocommit: bool, application_name: str,
                    prepare: bool | None) -> tuple[str, dict[str, Any]]:
    """The URL and keyword arguments of ``connect`` (``pgbg.aio`` opens its async
    connections with the same)."""
    target = url or database_url()
    try:
        own = conninfo_to_dict(target)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"the database URL {mask_url(target)} cannot be read: "
                                 f"{mask_url(str(exc))}") from None
    keepalive: dict[str, Any] = {k: v for k, v in KEEPALIVE.items() if k not in own}
    return target, {"autocommit": autocommit, "connect_timeout": 10,
                    "application_name": versioned_name(application_name),
                    # 5: psycopg's own default; None: never prepare
                    "prepare_threshold": 5 if (prepare_enabled() if prepare is None
                                               else prepare) else None,
                    **keepalive}


@contextmanager
def unavailable(target: str) -> Iterator[None]:
    """A failure to connect to ``target`` as ``DatabaseUnavailable``, password masked."""
    try:
        yield
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to {mask_url(target)}: {mask_url(reason)}"
        ) from exc


_READ_COMMITTED = "read committed"
_default_isolation: weakref.WeakKeyDictionary[psycopg.Connection[Any], str] = (
    weakref.WeakKeyDictionary())


def read_committed(conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
    """Run what follows at READ COMMITTED, the level pgbg's claim and row updates are
    written for (under REPEATABLE READ the claim's snapshot predates its lock wait).

    Free on the usual server: the connection's ``default_transaction_isolation`` is read
    once (at its first use here) and, when it is read committed, nothing is added. Else an
    autocommit statement is wrapped in a ``BEGIN ISOLATION LEVEL READ COMMITTED``
    transaction, and an idle non-autocommit connection starts its next transaction at that
    level. Inside a transaction already begun, the caller chose; nothing changes.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return nullcontext()
    default = _default_isolation.get(conn)
    if default is None:
        row = conn.execute("SELECT current_setting('default_transaction_isolation')"
                           ).fetchone()
        default = _default_isolation[conn] = str(row[0]) if row else _READ_COMMITTED
        if not conn.autocommit:
            conn.commit()  # the look ended the idle state it began in
    if default == _READ_COMMITTED:
        return nullcontext()
    if not conn.autocommit:
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        return nullcontext()
    if conn.isolation_level != psycopg.IsolationLevel.READ_COMMITTED:
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return conn.transaction()


def _drop_shared() -> None:
    global _shared, _shared_pid
    if _shared is not None and _shared_pid == os.getpid():
        _shared.close()
    elif _shared is not None:
        _inherited.append(_shared)
    _shared, _shared_pid = None, None


@contextmanager
def shared_connection() -> Iterator[psycopg.Connection[Any]]:
    """This process's cached autocommit connection (reopened if it broke), one user at a time."""
    global _shared, _shared_pid
    with _lock:
        if _shared_pid != os.getpid() or _shared is None or _shared.closed or _shared.broken:
            _drop_shared()
            _shared, _shared_pid = connect(), os.getpid()
        try:
            yield _shared
        except psycopg.errors.UndefinedTable as exc:
            raise SchemaMissing() from exc
        except psycopg.errors.InvalidSchemaName as exc:
            raise SchemaMissing() from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"lost the connection to {mask_url(database_url())}: {mask_url(str(exc))}"
            ) from exc


def _after_fork_in_child() -> None:
    global _shared, _shared_pid, _lock
    _lock = threading.Lock()
    if _shared is not None:
        _inherited.append(_shared)
    _shared, _shared_pid = None, None


os.register_at_fork(after_in_child=_after_fork_in_child)
