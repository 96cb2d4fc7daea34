"""``pgbg web``: the dashboard and ``/metrics`` over HTTP (uvicorn)."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Annotated

import typer

from pgbg.cli.common import app, command, fail

LOG_LEVELS = ("debug", "info", "warning", "error")
# Without a password the Host header is all the dashboard can check: it must name this
# machine, so a page of another name that a DNS rebinding points at 127.0.0.1 is refused.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@app.command()
@command
def web(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8477,
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="Show everything, change nothing (no action buttons; POST: 403).")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")
                         ] = "info",
) -> None:
    """The web dashboard and Prometheus /metrics.

    With PGBG_WEB_PASSWORD set, every page asks for HTTP Basic credentials (user:
    PGBG_WEB_USER, default "pgbg"); /healthz stays open. An address other than loopback
    needs a password.

    Example: PGBG_WEB_PASSWORD=s3cret pgbg web --host 0.0.0.0 --port 8477
    """
    if log_level.lower() not in LOG_LEVELS:
        raise fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, "
                   f"not {log_level[:40]!r}")
    password = os.environ.get("PGBG_WEB_PASSWORD")
    for name, value in (("PGBG_WEB_PASSWORD", password),
                        ("PGBG_WEB_USER", os.environ.get("PGBG_WEB_USER"))):
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError:  # set from a shell of another encoding
            raise fail(f"{name} is not valid UTF-8 (a browser sends UTF-8): set it again "
                       "from a UTF-8 terminal") from None
    if not is_loopback(host) and not password:
        raise fail(f"refusing to listen on {host} without a password: set PGBG_WEB_PASSWORD "
                   "(or listen on 127.0.0.1)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:  # a port already taken: one line, before the server starts
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        import uvicorn

        from pgbg.web import create_app
    except ImportError as exc:
        raise fail(f"the dashboard needs the web extra: pip install 'pgbg[web]' ({exc})"
                   ) from None
    application = create_app(read_only=read_only, password=password or None,
                             allowed_hosts=None if password else LOOPBACK_NAMES)
    from pgbg.cli.common import setup_logging

    setup_logging(log_level)
    uvicorn.run(application, host=host, port=port, log_level=log_level.lower(),
                proxy_headers=False, server_header=False, date_header=True,
                # open /events streams end within 3 s of a SIGTERM
                timeout_graceful_shutdown=3)
