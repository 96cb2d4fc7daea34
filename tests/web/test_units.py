"""The dashboard's pieces that need no database: escaping, tokens, credentials, metrics."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgbg
from pgbg.cli.web import is_loopback
from pgbg.web import metrics, render
from pgbg.web.security import Csrf, credentials_match


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials() -> None:
    assert credentials_match(basic("u", "p:w@é"), "u", "p:w@é")
    assert not credentials_match(basic("u", "p"), "u", "q")
    assert not credentials_match(basic("v", "p"), "u", "p")
    assert not credentials_match(basic("u", ""), "u", "p")
    assert not credentials_match("Bearer x", "u", "p")
    assert not credentials_match("Basic ####", "u", "p")
    assert not credentials_match("Basic " + base64.b64encode(b"\xff:\xfe").decode(), "u", "p")
    assert not credentials_match("Basic " + base64.b64encode(b"nocolon").decode(), "u", "p")
    assert not credentials_match(None, "u", "p")


def test_csrf_tokens() -> None:
    csrf, other = Csrf(b"k" * 32), Csrf(b"j" * 32)
    token = csrf.new_token()
    assert csrf.valid(token) and not other.valid(token)
    assert csrf.accepts(token, token)
    assert not csrf.accepts(token, csrf.new_token())
    assert not csrf.accepts(None, token) and not csrf.accepts(token, None)
    forged = token.split(".")[0] + ".00"
    assert not csrf.accepts(forged, forged)
    assert not csrf.valid("x" * 500)


def test_clip_and_visible() -> None:
    assert render.clip("abc", 2) == "ab… (1 more characters)"
    assert render.clip(None) == ""
    assert render.visible("a\x1b[31m\u202eb\tc\nd\x00") == "a\\u001b[31m\\u202eb\tc\nd\\u0000"
    assert render.pretty_json({"k": "é"}) == '{\n  "k": "é"\n}'


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.8.0.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    assert not is_loopback("example.com") and not is_loopback("10.0.0.1")


def test_metrics_labels_survive_any_text() -> None:
    nasty = 'a"b\\c\nd}{,=é<script>'
    readings = {"live": [[nasty, "queued", 2]], "queue": [[nasty, 2, 1.5]],
                "finished": [[nasty, "failed", 1, 1, [0] * 4 + [1] * 9, 2.5, [1] * 13, 0.01]],
                "workers": [["w", nasty, 12, 4, 1, 0.5, False]], "periodic_enabled": 0}
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(readings))}
    assert families["pgbg_tasks"].samples[0].labels["task_type"] == nasty
    assert families["pgbg_worker_slots"].samples[0].labels["hostname"] == nasty
    wait = {s.labels.get("le"): s.value for s in families["pgbg_task_wait_seconds"].samples
            if s.name.endswith("_bucket")}
    assert wait["0.5"] == 0 and wait["1.0"] == 1 and wait["+Inf"] == 1


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_an_unexpected_error_is_a_500_page_without_a_traceback(monkeypatch: Any) -> None:
    import contextlib

    from starlette.testclient import TestClient

    from pgbg.web import create_app, data
    from pgbg.web.pool import Pool

    def broken(conn: Any) -> Any:
        raise RuntimeError("password=hunter2 in a message nobody meant to show")

    monkeypatch.setattr(Pool, "connection", lambda self: contextlib.nullcontext(None))
    monkeypatch.setattr(data, "periodic", broken)
    app = create_app(database_url="postgresql://u:pw@127.0.0.1:9/x", password=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/periodic")
    assert response.status_code == 500
    assert "Server error" in response.text
    assert "hunter2" not in response.text and "Traceback" not in response.text
    pgbg.configure()


def test_the_csrf_cookie_is_found_beside_odd_cookies() -> None:
    from pgbg.web.security import _cookie

    scope = {"headers": [(b"cookie", b'other="unbalanced; x=[1,2]; pgbg_csrf=abc.def')]}
    assert _cookie(scope, "pgbg_csrf") == "abc.def"
    assert _cookie({"headers": []}, "pgbg_csrf") is None


def test_indented_keeps_numbers_and_strings_and_gives_up_when_deep() -> None:
    from pgbg.web.data import PRETTY_DEPTH, indented

    assert indented('{"a": [1, 0.10000000000000000000001, {}], "b\\"": []}') == (
        '{\n  "a": [\n    1,\n    0.10000000000000000000001,\n    {}\n  ],\n  "b\\"": []\n}')
    deep = "[" * (PRETTY_DEPTH + 2) + "]" * (PRETTY_DEPTH + 2)  # [] innermost
    assert indented(deep) == deep
    assert indented("[1, 2") == "[1, 2"  # not JSON after all: as it is
    assert indented('"a, b: [c]"') == '"a, b: [c]"'


def test_a_password_held_as_surrogates_compares_as_its_bytes() -> None:
    latin1 = "Basic " + base64.b64encode(b"u:p\xe4ss").decode()
    assert credentials_match(latin1, "u", "p\udce4ss")
    assert not credentials_match(basic("u", "anything"), "u", "p\udce4ss")


def test_paths_hosts_and_the_cookie_name() -> None:
    from pgbg.web.security import cookie_name, host_port, route_path

    assert route_path({"path": "/admin/tasks/healthz", "root_path": "/admin/tasks"}) == \
        "/healthz"
    assert route_path({"path": "/admin/tasks", "root_path": "/admin/tasks"}) == "/"
    assert route_path({"path": "/admin/tasksx", "root_path": "/admin/tasks"}) == \
        "/admin/tasksx"
    assert route_path({"path": "/healthz", "root_path": ""}) == "/healthz"
    assert host_port("LocalHost:8477") == ("localhost", "8477")
    assert host_port("[::1]:8477") == ("[::1]", "8477")
    assert host_port("[::1]") == ("[::1]", None)
    assert host_port("example.org") == ("example.org", None)
    assert host_port(None) == ("", None)
    assert cookie_name({"headers": [(b"host", b"127.0.0.1:8478")]}) == "pgbg_csrf_8478"
    assert cookie_name({"headers": [(b"host", b"testserver")]}) == "pgbg_csrf"
    assert cookie_name({"headers": []}) == "pgbg_csrf"
