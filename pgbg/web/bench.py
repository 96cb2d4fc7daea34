"""How fast the dashboard renders over a long history: ``python -m pgbg.web.bench``.

In a scratch database (dropped afterwards unless ``--keep``) on the server pgbg resolves
(``PGBG_DATABASE_URL``, ``DATABASE_URL`` or the embedded one): ``--rows`` finished tasks
(default 1,000,000) spread over the last ``--days`` days, inserted with one
``INSERT … SELECT generate_series``, plus a live queue. Then the server-side time of each
page (the app called in-process, request to last byte, no network): median and p95 of
``--repeat`` requests after one warm-up, and the plan of the page query of page 50.
Needs the ``test`` extra (httpx, for Starlette's test client).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from pgbg import db, migrate

FILL = """
INSERT INTO pgbg.task (id, task_type, func, args, status, queued_at, started_at, finished_at,
                       attempt, worker_id, hostname, pid, exit_code, error, result)
SELECT gen_random_uuid(), 'type-' || (i %% 20), 'app.tasks:work', jsonb_build_array(i),
       s.status::pgbg.task_status, f.at - w.wait - r.run, f.at - r.run, f.at, 1,
       '00000000-0000-0000-0000-000000000001', 'bench-host', 1000 + i %% 5000,
       CASE s.status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END,
       CASE s.status WHEN 'failed' THEN
            E'Traceback (most recent call last):\\n  File "app/tasks.py", line 12\\n'
            || 'ValueError: ' || (ARRAY['disk full', 'timeout talking to PACS',
                                        'bad DICOM header', 'no such study'])[1 + i %% 4]
            || ' (' || i || ')'
            WHEN 'terminated' THEN 'terminated by bench-host:1'
            WHEN 'cancelled' THEN 'removed from the queue' END,
       CASE s.status WHEN 'succeeded' THEN jsonb_build_object('n', i) END
  FROM generate_series(1, %(rows)s) i,
       LATERAL (SELECT CASE WHEN i %% 100 < 90 THEN 'succeeded' WHEN i %% 100 < 97 THEN 'failed'
                            WHEN i %% 100 < 99 THEN 'terminated' ELSE 'cancelled' END
                       AS status) s,
       LATERAL (SELECT now() - make_interval(secs => %(span)s * (i::float / %(rows)s)) AS at) f,
       LATERAL (SELECT make_interval(secs => (i %% 997) / 100.0) AS wait) w,
       LATERAL (SELECT make_interval(secs => (i %% 89) / 10.0) AS run) r
"""
LIVE = """
INSERT INTO pgbg.task (id, task_type, func, args, status, queued_at, priority)
SELECT gen_random_uuid(), 'type-' || (i %% 20), 'app.tasks:work', jsonb_build_array(i),
       'queued', now() - make_interval(secs => i), i %% 3
  FROM generate_series(1, %(queued)s) i
"""


def _with_database(url: str, name: str) -> str:
    if "://" in url:
        return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    return f"{url} dbname={name}"


def _timings(client: Any, path: str, repeat: int) -> tuple[float, float, float, int]:
    start = time.perf_counter()
    client.get(path)  # the first request: cold caches (the overview's 24-hour figures)
    first = (time.perf_counter() - start) * 1000
    times = []
    status = 0
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        status = response.status_code
    times.sort()
    return first, statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgbg.web.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from pgbg.web import create_app

    server = db.database_url()
    name = f"pgbg_web_bench_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server, name)
    try:
        migrate.upgrade(url)
        start = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FILL, {"rows": args.rows, "span": args.days * 86400})
            conn.execute(LIVE, {"queued": args.queued})
            conn.execute("UPDATE pgbg.task SET task_type = 'rare' WHERE id IN (SELECT id FROM "
                         "pgbg.task WHERE finished_at IS NOT NULL LIMIT 20)")
            conn.execute("VACUUM ANALYZE pgbg.task")
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('pgbg.task'))"
                                ).fetchone()
            any_id = conn.execute("SELECT id FROM pgbg.task WHERE finished_at IS NOT NULL "
                                  "ORDER BY finished_at DESC LIMIT 1").fetchone()
        print(f"{args.rows:,} finished tasks over {args.days:g} days and {args.queued:,} "
              f"queued, inserted in {time.perf_counter() - start:.1f}s "
              f"(pgbg.task: {size[0] if size else '?'})")
        app = create_app(database_url=url)
        with TestClient(app) as client:
            first, median, p95, status = _timings(client, "/", args.repeat)
            print(f"\nthe overview, first request (24-hour figures read): {first:.1f}ms; "
                  f"then median {median:.1f}ms, p95 {p95:.1f}ms")
            query = "limit=50"
            for _ in range(49):  # page 50: follow the Next link 49 times
                page = client.get(f"/tasks?{query}").text
                found = re.search(r'rel="next" href="/tasks\?([^"]+)"', page)
                assert found, "fewer than 50 pages"
                query = found[1].replace("&amp;", "&")
            paths = {
                "/ (overview)": "/",
                "/tasks (first page)": "/tasks",
                "/tasks?status=failed&type=type-3": "/tasks?status=failed&type=type-3",
                "/tasks?status=failed (no failures there)": "/tasks?status=failed&type=type-1",
                "/tasks?type=rare": "/tasks?type=rare",
                "/tasks?status=failed": "/tasks?status=failed",
                "/tasks?status=failed&since=1h": "/tasks?status=failed&since=1h",
                "/tasks?q=PACS&status=failed": "/tasks?q=PACS&status=failed",
                "/tasks page 50": f"/tasks?{query}",
                "/tasks/{id}": f"/tasks/{any_id[0] if any_id else ''}",
                "/queue": "/queue",
                "/metrics": "/metrics",
            }
            print(f"\nserver-side time, in-process, {args.repeat} requests each after a "
                  "warm-up (target < 200 ms):")
            print(f"  {'page':40} {'first':>9} {'median':>9} {'p95':>9}  status")
            for label, path in paths.items():
                first, median, p95, status = _timings(client, path, args.repeat)
                print(f"  {label:40} {first:7.1f}ms {median:7.1f}ms {p95:7.1f}ms  {status}")
        cursor = dict(pair.split("=", 1) for pair in query.split("&"))
        from urllib.parse import unquote

        at, _, tid = unquote(cursor["after"]).rpartition(",")
        from pgbg.web import data

        plans = {
            "page 50": (None, None, (at, tid)),
            "status=failed": (["failed"], None, None),
            "type=rare": (None, "rare", None),
            "status=failed&type=type-1 (matches nothing)": (["failed"], "type-1", None),
        }
        with psycopg.connect(url, autocommit=True) as conn:
            for label, (statuses, task_type, after) in plans.items():
                params = data.finished_params(statuses, task_type, None, None,
                                              after, 51)  # type: ignore[arg-type]
                plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
                                    + data.finished_page("id", statuses), params).fetchall()
                print(f"\nplan of the {label} query:")
                for (line,) in plan:
                    if any(word in line for word in ("Scan", "Execution", "Limit", "Sort",
                                                     "Buffers: shared", "Index Cond")):
                        print("  " + line.strip()[:150])
    finally:
        if not args.keep:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"\nkept: {db.mask_url(url)}")


if __name__ == "__main__":
    main()
