"""The dashboard's pages and actions: read the request, read the database, render.

Each endpoint is a plain function (Starlette runs it in its thread pool). It reads what
it shows through ``pgbg.web.data`` on a pooled connection, gives the connection back, then
renders. Requests from htmx (``HX-Request``) get the live fragment of the page only.
Actions are POST forms (readable and usable without JavaScript) that call the library.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pgbg import admin, api, db, queries
from pgbg.exceptions import (
    DatabaseUnavailable,
    InvalidOption,
    InvalidTaskState,
    PgbgError,
    SchemaMissing,
    TaskNotFound,
)
from pgbg.models import TaskStatus
from pgbg.web import charts, data, metrics, rollup
from pgbg.web.pool import Pool
from pgbg.web.security import CSRF_FIELD, Csrf, route_path

PAGE_SIZE = 50
MAX_PAGE = 500
MAX_LIVE = 100  # unfinished tasks /tasks lists above the finished ones (/queue has the rest)
logger = logging.getLogger(__name__)
DAY_EVERY = 5.0  # seconds the overview's 24-hour figures are reused before read again
MAX_BULK = 1000  # tasks one bulk retry queues again; run it again for more
RETRYABLE = ("failed", "terminated", "cancelled")
DONE_MESSAGES = {
    "terminate": "Termination requested: the task's worker stops its process group.",
    "retry": "The task is queued again.",
    "remove": "The task was removed from the queue.",
}
ACTIONS = ("terminate", "retry", "remove")


T = TypeVar("T")


class BadRequest(Exception):
    """A query parameter or form field that cannot be read; the message says which."""


@dataclass(frozen=True)
class Settings:
    read_only: bool
    lease: float
    poll: float  # seconds between polls of a live fragment
    task_poll: float  # ... of a running task's page
    auth: bool
    events: bool  # /events is served: live fragments also refresh on pgbg:changed


@dataclass(frozen=True)
class Filters:
    statuses: list[str] | None
    task_type: str | None
    since: float | None
    since_text: str
    text: str | None
    limit: int

    def query(self, **extra: str) -> str:
        pairs: list[tuple[str, str]] = [("status", s) for s in self.statuses or []]
        for key, value in (("type", self.task_type), ("since", self.since_text or None),
                           ("q", self.text)):
            if value:
                pairs.append((key, value))
        if self.limit != PAGE_SIZE:
            pairs.append(("limit", str(self.limit)))
        pairs.extend(extra.items())
        return urlencode(pairs)

    @property
    def retry_statuses(self) -> list[str]:
        """What a bulk retry of this filter queues again: its retryable statuses (failed
        when it names none)."""
        if not self.statuses:
            return ["failed"]
        return [s for s in self.statuses if s in RETRYABLE]


def _one(params: Any, name: str, limit: int) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} is given more than once")
    value = values[0].strip() if values else ""
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} holds a NUL character")
    return value or None


def filters(params: Any) -> Filters:
    """The task filters of a query string (or a form); ``BadRequest`` saying what is wrong."""
    known = {s.value for s in TaskStatus}
    statuses = [s for s in params.getlist("status") if s]
    for status in statuses:
        if status not in known:
            raise BadRequest(f"status must be one of {', '.join(sorted(known))}, "
                             f"not {status[:40]!r}")
    since_text = _one(params, "since", 20) or ""
    try:
        since = admin.parse_duration(since_text).total_seconds() if since_text else None
    except InvalidOption as exc:
        raise BadRequest(f"since: {exc}") from None
    except (OverflowError, ValueError):  # more days than a timedelta holds
        raise BadRequest("since must be at most 10 years") from None
    if since is not None and not 0 < since <= 10 * 366 * 86400:
        raise BadRequest("since must be more than 0 and at most 10 years")
    limit_text = _one(params, "limit", 10)
    try:
        limit = int(limit_text) if limit_text else PAGE_SIZE
    except ValueError:
        raise BadRequest(f"limit must be a whole number, not {limit_text!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return Filters(sorted(set(statuses)) or None, _one(params, "type", 255), since,
                   since_text, _one(params, "q", 200), limit)


def cursor(text: str | None) -> tuple[datetime, uuid.UUID] | None:
    """``after=<finished_at ISO 8601>,<id>``: the last row of the previous page."""
    if not text:
        return None
    at, _, tid = text.rpartition(",")
    try:
        moment, task_id = datetime.fromisoformat(at), uuid.UUID(tid)
    except ValueError:
        raise BadRequest("after must be a page cursor (a time and a task id), as the "
                         "Next link gives") from None
    if moment.tzinfo is None:
        raise BadRequest("after must carry a time zone")
    return moment, task_id


def parse_task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise TaskNotFound(f"{text[:80]!r} is not a task id (a UUID)") from None


class Site:
    def __init__(self, pool: Pool, templates: Environment, csrf: Csrf,
                 settings: Settings) -> None:
        self.pool, self.templates, self.csrf, self.settings = pool, templates, csrf, settings
        self._day: Every[tuple[dict[str, dict[str, int]], list[data.Bucket]]] = Every(DAY_EVERY)
        self.rollup = rollup.DayRollup()

    # -- rendering -----------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200,
             **values: Any) -> HTMLResponse:
        fragment = request.headers.get("hx-request") == "true" and "fragment" in values
        name = values["fragment"] if fragment else template
        body = self.templates.get_template(name).render(
            request=request, settings=self.settings, csrf=request.state.csrf,
            csrf_field=CSRF_FIELD, path=route_path(request.scope), base=base(request),
            **values)
        return HTMLResponse(body, status_code=status)

    def error(self, request: Request, status: int, message: str) -> Response:
        titles = {400: "Bad request", 403: "Forbidden", 404: "Not found",
                  405: "Method not allowed", 409: "Not possible now",
                  503: "Database unavailable", 500: "Server error"}
        if route_path(request.scope) == "/metrics" and status == 503:
            return Response(metrics.render_down(), 503, media_type=metrics.CONTENT_TYPE)
        if not hasattr(request.state, "csrf"):  # outside the guard (never, but be safe)
            request.state.csrf = ""
        # a live fragment's poll while the database is down: it says so, and polls on
        # (htmx-config in base.html swaps a 503, so no error reaches the console)
        fragment = "_unavailable.html" if status == 503 else None
        try:
            return self.page(request, "error.html", status, title=titles.get(status, "Error"),
                             message=message, code=status,
                             **({"fragment": fragment} if fragment else {}))
        except Exception:  # a template that fails must not hide the error
            return Response(f"{status} {titles.get(status, 'Error')}: {message}\n", status,
                            media_type="text/plain")

    # -- pages ---------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        with self.pool.connection() as conn:
            checks = admin.doctor_checks(conn, self.settings.lease)
            live = data.live_counts(conn)
            hour = data.series(conn, 3600, 60)
            failures = data.recent_failures(conn, 10)
            stuck = data.stuck_tasks(conn, self.settings.lease, 20)
            workers = data.workers(conn)
        day_at, (finished, day) = self._day.get(self._day_figures)
        counts = data.counts(live, finished, 86400)
        lapsed = [w for w in workers if w["heartbeat_age"] > self.settings.lease]
        return self.page(
            request, "overview.html", fragment="_overview.html", counts=counts,
            statuses=[s.value for s in TaskStatus], failures=failures, stuck=stuck,
            lapsed=lapsed, workers=workers, day_at=day_at, day_every=DAY_EVERY,
            checks=[c for c in checks if c.name in (
                "workers with lapsed heartbeats", "tasks stuck in running",
                "oldest open transaction", "NOTIFY queue usage", "pgbg indexes",
                "dead tuples in pgbg.task", "worker versions")],
            charts={
                "hour_throughput": charts.throughput(hour, 60, "Finished per minute, last hour"),
                "hour_durations": charts.durations(hour, 60, "Wait and run time, last hour"),
                "day_throughput": charts.throughput(day, 3600, "Finished per hour, last day"),
                "day_durations": charts.durations(day, 3600, "Wait and run time, last day"),
            })

    def _day_figures(self) -> tuple[dict[str, dict[str, int]], list[data.Bucket]]:
        with self.pool.connection() as conn:
            return self.rollup.figures(conn)

    def warm(self) -> None:
        """Read the last day's complete hours now (at start, in the background), so no
        request pays for them."""
        try:
            self._day_figures()
        except Exception:  # the database may be down at start: the first request reads
            logger.debug("the overview's day could not be read ahead", exc_info=True)

    def tasks(self, request: Request) -> Response:
        f = filters(request.query_params)
        after = cursor(_one(request.query_params, "after", 100))
        want_live = f.statuses is None or any(s in ("queued", "running", "failed")
                                              for s in f.statuses)
        want_finished = f.statuses is None or any(TaskStatus(s).is_terminal
                                                  for s in f.statuses)
        with self.pool.connection() as conn:
            live = (data.live_tasks(conn, f.statuses, f.task_type, f.since, f.text, MAX_LIVE)
                    if want_live and after is None else [])
            finished = (data.finished_tasks(conn, f.statuses, f.task_type, f.since, f.text,
                                            after, f.limit + 1) if want_finished else [])
            types = data.task_types(conn)
        more = len(finished) > f.limit
        finished = finished[:f.limit]
        next_query = None
        if more and finished and finished[-1].finished_at is not None:
            last = finished[-1]
            assert last.finished_at is not None
            next_query = f.query(after=f"{last.finished_at.isoformat()},{last.id}")
        elif more:  # the last row's time cannot be read: no cursor to go on from
            more = False
        return self.page(
            request, "tasks.html", fragment="_tasks.html", f=f, live=live, finished=finished,
            next_query=next_query, first_query=f.query(), paged=after is not None,
            statuses=[s.value for s in TaskStatus], types=types,
            retryable=bool(f.retry_statuses) and want_finished)

    def task(self, request: Request) -> Response:
        tid = parse_task_id(request.path_params["task_id"])
        done = request.query_params.get("done")
        try:
            return self.task_page(request, tid, DONE_MESSAGES.get(done or ""), None, 200)
        except TaskNotFound as exc:
            if request.headers.get("hx-request") != "true":
                raise
            # the poll of a page whose task was purged or deleted meanwhile: htmx swaps
            # neither a 404 nor anything it logs, so the fragment that says so (and polls
            # no more) comes as a 200
            return self.page(request, "_gone.html", message=str(exc))

    def task_page(self, request: Request, tid: uuid.UUID, notice: str | None,
                  problem: str | None, status: int) -> HTMLResponse:
        with self.pool.connection() as conn:
            view = data.task(conn, tid)
            if view is None:
                raise TaskNotFound(f"no task with id {tid}")
            log, left_out = data.task_log(conn, tid)
            links = data.task_links(conn, tid)
        row = view.task
        return self.page(
            request, "task.html", status, fragment="_task.html", t=row, big=view.big,
            unreadable=view.unreadable, log=[line for line in log if line.level != "output"],
            output=[line for line in log if line.level == "output"], left_out=left_out,
            links=links, notice=notice, problem=problem,
            can_terminate=row.status in (TaskStatus.QUEUED, TaskStatus.RUNNING),
            can_remove=row.status == TaskStatus.QUEUED,
            can_retry=row.status.value in RETRYABLE and row.finished_at is not None)

    def queue(self, request: Request) -> Response:
        task_type = _one(request.query_params, "type", 255)
        with self.pool.connection() as conn:
            rows = data.queue(conn, task_type, 200)
        return self.page(request, "queue.html", fragment="_queue.html", rows=rows,
                         task_type=task_type)

    def workers(self, request: Request) -> Response:
        with self.pool.connection() as conn:
            rows = data.workers(conn)
            stuck = data.stuck_tasks(conn, self.settings.lease, 50)
        return self.page(request, "workers.html", fragment="_workers.html", rows=rows,
                         stuck=stuck)

    def periodic(self, request: Request) -> Response:
        with self.pool.connection() as conn:
            rows = data.periodic(conn)
        return self.page(request, "periodic.html", fragment="_periodic.html", rows=rows)

    def healthz(self, request: Request) -> Response:
        """Open without a password: it says only whether the database and schema answer."""
        try:
            with self.pool.connection() as conn:
                ok, detail = data.ping(conn)
        except (DatabaseUnavailable, SchemaMissing):
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        if not ok:
            return JSONResponse({"status": "unavailable", "database": "schema missing"}, 503)
        return JSONResponse({"status": "ok", "database": "ok", "schema": detail})

    def metrics(self, request: Request) -> Response:
        with self.pool.connection() as conn:
            readings = data.metric_readings(conn, metrics.WINDOW, self.settings.lease)
        return Response(metrics.render(readings), media_type=metrics.CONTENT_TYPE)

    # -- actions -------------------------------------------------------------------------

    async def _checked_form(self, request: Request) -> Any:
        """The form of a POST that may act: refused (403) when read-only or without the
        page's CSRF token."""
        if self.settings.read_only:
            raise _Forbidden("this dashboard is read-only: actions are turned off")
        try:
            form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
        except Exception:
            raise BadRequest("the form could not be read") from None
        token = form.get(CSRF_FIELD)
        if not self.csrf.accepts(getattr(request.state, "csrf_cookie", None),
                                 token if isinstance(token, str) else None):
            raise _Forbidden("the form's security token is missing or wrong: reload the page "
                             "and try again")
        return form

    async def action(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        name = request.path_params["action"]
        if name not in ACTIONS:
            return self.error(request, 404, "no such action")
        try:
            await self._checked_form(request)
        except _Forbidden as exc:
            return self.error(request, 403, str(exc))
        tid = parse_task_id(request.path_params["task_id"])
        try:
            await run_in_threadpool(self._act, name, tid)
        except (TaskNotFound, DatabaseUnavailable, SchemaMissing):
            raise
        except InvalidTaskState as exc:
            return await run_in_threadpool(self._refused, request, tid, str(exc))
        return RedirectResponse(f"{base(request)}/tasks/{tid}?done={name}", status_code=303)

    def _act(self, name: str, tid: uuid.UUID) -> None:
        """The library's action, on this dashboard's own connection (its database, whatever
        the process's ``pgbg.configure`` says)."""
        with self.pool.connection() as conn, api.database_errors():
            if name == "terminate":
                before = queries.run(conn, api.get_task_operation(tid))
                if before.status.is_terminal:
                    raise InvalidTaskState(f"task {tid} already finished "
                                           f"({before.status.value})")
                queries.run(conn, api.terminate_operation(tid, api.requester()))
            elif name == "retry":
                admin.requeue(conn, tid)
            else:
                queries.run(conn, api.remove_operation(tid))

    def _refused(self, request: Request, tid: uuid.UUID, message: str) -> Response:
        return self.task_page(request, tid, None, db.mask_url(message), 409)

    def bulk_retry_confirm(self, request: Request) -> Response:
        if self.settings.read_only:
            return self.error(request, 403, "this dashboard is read-only: actions are "
                              "turned off")
        f = filters(request.query_params)
        if not f.retry_statuses:
            raise BadRequest("this filter matches no failed, terminated or cancelled tasks")
        with self.pool.connection() as conn:
            ids = data.failed_ids(conn, f.task_type, f.since, f.text, f.retry_statuses,
                                  MAX_BULK + 1)
        # the form carries the ids counted: pressing the button queues these, never what
        # failed since (matching the filter still, and each as retry_task allows)
        return self.page(request, "retry.html", f=f, count=min(len(ids), MAX_BULK),
                         more=len(ids) > MAX_BULK, max_bulk=MAX_BULK, done=None,
                         ids=",".join(str(tid) for tid in ids[:MAX_BULK]))

    async def bulk_retry(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            form = await self._checked_form(request)
        except _Forbidden as exc:
            return self.error(request, 403, str(exc))
        f = filters(form)
        if not f.retry_statuses:
            raise BadRequest("this filter matches no failed, terminated or cancelled tasks")
        among = confirmed_ids(form)
        queued, skipped, why = await run_in_threadpool(self._retry_all, f, among)
        return self.page(request, "retry.html", f=f, count=queued, more=False,
                         max_bulk=MAX_BULK, done={"queued": queued, "skipped": skipped,
                                                  "why": why}, ids="")

    def _retry_all(self, f: Filters,
                   among: list[uuid.UUID] | None) -> tuple[int, int, str | None]:
        """Queue again what the filter matches, of ``among`` (the confirmation's ids) when
        given; (queued, skipped, why the first skipped one was)."""
        queued = skipped = 0
        why: str | None = None
        with self.pool.connection() as conn:
            ids = data.failed_ids(conn, f.task_type, f.since, f.text, f.retry_statuses,
                                  MAX_BULK, among)
            if among is not None and len(ids) < len(among):
                skipped = len(among) - len(ids)
                why = "no longer matching the filter"
            for tid in ids:
                try:
                    admin.requeue(conn, tid)
                    queued += 1
                except (InvalidTaskState, TaskNotFound) as exc:  # changed meanwhile
                    skipped += 1
                    why = why or str(exc)
        return queued, skipped, why


def confirmed_ids(form: Any) -> list[uuid.UUID] | None:
    """The ``ids`` field of a bulk retry's confirmation: the tasks it counted (None: a form
    without it, as a script posts: what the filter matches now)."""
    values = form.getlist("ids")
    if not values:
        return None
    if len(values) > 1 or not isinstance(values[0], str):
        raise BadRequest("ids is given more than once")
    parts = [part for part in values[0].split(",") if part.strip()]
    if len(parts) > MAX_BULK:
        raise BadRequest(f"ids holds more than {MAX_BULK} task ids")
    try:
        return list(dict.fromkeys(uuid.UUID(part.strip()) for part in parts))
    except ValueError:
        raise BadRequest("ids must be task ids (UUIDs) separated by commas, as the "
                         "confirmation page gives") from None


def base(request: Request) -> str:
    """Where the app is mounted (``root_path``; "" at the root): every link, form and
    redirect starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


class Every(Generic[T]):
    """A value read again at most every ``seconds``: one thread reads, the others use the
    previous value meanwhile (the first readers wait for the first value)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._value: tuple[datetime, T] | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def get(self, read: Callable[[], T]) -> tuple[datetime, T]:
        """(when it was read, the value)."""
        current = self._value
        if current is not None and time.monotonic() - self._at < self.seconds:
            return current
        if current is not None and not self._lock.acquire(blocking=False):
            return current  # another thread reads it now
        if current is None:
            self._lock.acquire()
        try:
            if self._value is None or time.monotonic() - self._at >= self.seconds:
                self._value = (datetime.now(UTC), read())
                self._at = time.monotonic()
            return self._value
        finally:
            self._lock.release()


class _Forbidden(PgbgError):
    """Not allowed here."""
