"""The embedded server's socket directory is private: with trust authentication, whoever
can reach the socket is any database user. No server is started here."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbg import embedded
from pgbg.exceptions import EmbeddedServerError

NOBODY = 65534
ME = (os.geteuid(), os.getegid())


@pytest.fixture
def fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PGBG_HOME too long for a socket path, so the socket goes to the temp directory."""
    home = tmp_path / ("h" * 120)
    monkeypatch.setenv("PGBG_HOME", str(home))
    digest = hashlib.sha256(str(home.resolve() / "pgdata").encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"pgbg-{digest}"
    assert embedded.server().socket_dir == path
    yield path
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        for entry in path.iterdir():
            entry.unlink()
        path.rmdir()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_socket_directory_is_private_whatever_the_umask(fallback: Path) -> None:
    old = os.umask(0)
    try:
        embedded.make_private_dir(fallback, *ME)
    finally:
        os.umask(old)
    assert _mode(fallback) == 0o700 and os.lstat(fallback).st_uid == ME[0]


def test_our_directory_with_loose_permissions_is_made_private(fallback: Path) -> None:
    fallback.mkdir()
    fallback.chmod(0o777)
    embedded.make_private_dir(fallback, *ME)
    assert _mode(fallback) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user owns needs root")
def test_a_directory_another_user_made_is_refused(fallback: Path) -> None:
    fallback.mkdir(mode=0o777)
    os.chown(fallback, NOBODY, NOBODY)
    with pytest.raises(EmbeddedServerError, match="not owned by"):
        embedded.make_private_dir(fallback, *ME)
    assert os.lstat(fallback).st_uid == NOBODY  # untouched
    # ensure_running refuses it before it trusts a socket there or starts anything
    with pytest.raises(EmbeddedServerError, match="not owned by"):
        embedded.ensure_running()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user owns needs root")
def test_a_directory_holding_another_users_files_is_refused(fallback: Path) -> None:
    fallback.mkdir(mode=0o700)
    planted = fallback / f".s.PGSQL.{embedded.PORT}"
    planted.write_text("")
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(EmbeddedServerError, match="holds files of another user"):
        embedded.make_private_dir(fallback, *ME)


def test_a_symlink_is_refused(fallback: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    fallback.symlink_to(target)
    with pytest.raises(EmbeddedServerError, match="not a directory"):
        embedded.make_private_dir(fallback, *ME)
