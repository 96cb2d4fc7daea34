"""``create_app``: the dashboard as an ASGI application (Starlette, Jinja2, htmx).

Endpoints are plain functions run in Starlette's thread pool: each takes a pooled
connection, reads what its page shows in autocommit statements, gives the connection back
and only then renders. Errors become pages: a bad parameter 400, a refused action 403, an
unknown task 404, a task in the wrong state 409, the database down 503, anything else 500
— never a traceback, never a password (messages go through ``db.mask_url``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgbg import db
from pgbg.exceptions import (
    DatabaseUnavailable,
    InvalidOption,
    PgbgError,
    SchemaMissing,
    TaskNotFound,
)
from pgbg.web import live, pages, render
from pgbg.web.pool import Pool
from pgbg.web.security import Csrf, Guard

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent


def create_app(read_only: bool = False, user: str | None = None, password: str | None = None,
               *, database_url: str | None = None, secret: bytes | None = None,
               lease: float = 30.0, poll_seconds: float | None = None,
               events: bool | None = None, secure_cookie: bool = False,
               allowed_hosts: Collection[str] | None = None) -> Any:
    """The dashboard. ``user``/``password``: HTTP Basic on every path but ``/healthz``
    (default: ``PGBG_WEB_USER``, or ``pgbg``, and ``PGBG_WEB_PASSWORD``; no password, no
    authentication). ``read_only``: no actions (every POST is refused with 403).
    ``secret``: signs CSRF tokens (default ``PGBG_WEB_SECRET``, else random per process:
    replicas behind one address need the same). ``lease``: the heartbeat age after which a
    worker counts as lapsed. ``events``: serve ``/events`` (server-sent events fed by
    LISTEN; default: ``db.listen_enabled()``), pages then refresh on each change and poll
    every ``poll_seconds`` besides (default 10 s; 2 s without events). A running task's
    page polls every 2 s (its log lines send no notification). ``database_url``: the
    database this dashboard shows and acts on, through its own connections (the process's
    ``pgbg.configure`` is left alone: a host app's queue, or a second dashboard, stays
    where it is); default: pgbg's (``PGBG_DATABASE_URL``, ...). ``allowed_hosts``: the
    names the Host header may give (default: any). Mounted in a host app (a ``Mount``,
    whose lifespan Starlette does not run), it starts what ``/events`` needs on first use."""
    user = user if user is not None else os.environ.get("PGBG_WEB_USER") or "pgbg"
    password = password if password is not None else os.environ.get("PGBG_WEB_PASSWORD")
    env_secret = os.environ.get("PGBG_WEB_SECRET")
    csrf = Csrf(secret or (env_secret.encode() if env_secret else None))
    if events is None:
        events = db.listen_enabled()
    if poll_seconds is None:
        poll_seconds = 10.0 if events else 2.0
    if database_url is not None:
        database_url = db.libpq_url(database_url)
        db.connect_options(database_url, True, "pgbg web", None)  # unreadable: said now
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(default=True, default_for_string=True),
                            trim_blocks=True, lstrip_blocks=True)
    render.install(templates)
    pool = Pool(database_url)
    broadcaster = live.Broadcaster(database_url) if events else None
    settings = pages.Settings(read_only=read_only, lease=lease, poll=poll_seconds,
                              task_poll=min(poll_seconds, 2.0), auth=bool(password),
                              events=events)
    site = pages.Site(pool, templates, csrf, settings)

    async def event_stream(request: Request) -> Response:
        if broadcaster is None:
            return site.error(request, 404, "no live events in poll-only mode: pages poll")
        broadcaster.ensure_started()  # mounted, the lifespan never ran
        return StreamingResponse(broadcaster.stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return site.error(request, exc.status_code, str(exc.detail))

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        logger.warning("database unavailable", extra={"error": db.mask_url(str(exc))})
        return site.error(request, 503, db.mask_url(str(exc)))

    async def on_bad_request(request: Request, exc: Exception) -> Response:
        return site.error(request, 400, str(exc))

    async def on_refused(request: Request, exc: Exception) -> Response:
        return site.error(request, 409, db.mask_url(str(exc)))

    async def on_not_found(request: Request, exc: Exception) -> Response:
        return site.error(request, 404, db.mask_url(str(exc)))

    async def on_error(request: Request, exc: Exception) -> Response:
        # ServerErrorMiddleware: the response is sent, then the exception goes on to the
        # server's log (uvicorn's), which is where the traceback belongs
        return site.error(request, 500, "an unexpected error; the server log has the details")

    routes = [
        Route("/", site.overview),
        Route("/tasks", site.tasks),
        Route("/tasks/retry", site.bulk_retry_confirm, methods=["GET"]),
        Route("/tasks/retry", site.bulk_retry, methods=["POST"]),
        Route("/tasks/{task_id}", site.task),
        Route("/tasks/{task_id}/{action:str}", site.action, methods=["POST"]),
        Route("/queue", site.queue),
        Route("/workers", site.workers),
        Route("/periodic", site.periodic),
        Route("/healthz", site.healthz),
        Route("/metrics", site.metrics),
        Route("/events", event_stream),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: dict[Any, Any] = {
        HTTPException: on_http_error, DatabaseUnavailable: on_unavailable,
        SchemaMissing: on_unavailable, pages.BadRequest: on_bad_request,
        InvalidOption: on_bad_request, TaskNotFound: on_not_found, PgbgError: on_refused,
        Exception: on_error}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if broadcaster is not None:
            broadcaster.ensure_started()
        # the overview's day, read ahead (served alone: a mounted app's lifespan never
        # runs, and its first overview reads it): no request waits for 23 hours of history
        threading.Thread(target=site.warm, name="pgbg-web-warm", daemon=True).start()
        yield
        if broadcaster is not None:
            broadcaster.stop()
        pool.close()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return site.error(request, 405, "this address does not take that method")

    app.add_exception_handler(405, method_not_allowed)
    guarded = Guard(app, user=user, password=password, csrf=csrf, secure_cookie=secure_cookie,
                    allowed_hosts=allowed_hosts)
    return guarded


