"""In a real browser (Playwright driving Debian's chromium): the overview, a running task's
page updating live, Terminate clicked, and the task's whole process group gone.

Screenshots of every page go to ``$PGBG_SCREENSHOTS`` (default: a directory under the
temporary directory); the path is printed at the end. Under CI (``CI`` set) a missing
chromium fails the test rather than skipping it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess, wait_for

import pgbg
from web.conftest import PASSWORD, USER, WebServer, screenshots_dir

CHROMIUM = os.environ.get("PGBG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"chromium not found at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(start_server: Any) -> WebServer:
    return start_server()


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_terminate_from_the_browser(browser: Any, server: WebServer,
                                    module_worker: WorkerProcess, tmp_path: Path) -> None:
    shots = screenshots_dir()
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: problems.append(f"{page.url} console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") else None)
    # a poll or the event stream in flight when the test navigates on is aborted: expected
    page.on("requestfailed", lambda req: problems.append(
        f"request failed: {req.url} {req.failure}") if req.failure != "net::ERR_ABORTED"
        else None)

    failed = pgbg.enqueue("pgbg_test_web_tasks:fail", args=["shown on the overview"],
                          task_type="web-browser-fail")
    pgbg.wait_task(failed, timeout=60)
    pidfile = tmp_path / "pids"
    result = pgbg.enqueue("pgbg_test_web_tasks:talk_and_block", args=[str(pidfile)],
                          task_type="web-browser")
    wait_for(pidfile.exists, timeout=60, message="the task to start its grandchild")
    child, _grandchild, pgid = map(int, pidfile.read_text().split())
    assert pgid == child  # the task leads its own process group

    page.goto(server.url + "/")
    page.wait_for_selector('[data-status="running"]')
    page.wait_for_function(
        "document.querySelector('[data-status=\"running\"]').textContent.trim() !== '0'",
        timeout=30_000)
    assert "shown on the overview" in page.content()
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    page.goto(f"{server.url}/tasks/{result.id}")
    page.evaluate("window.pgbgLoaded = true")  # gone if the page reloaded
    # the captured output arrives while the task runs: htmx swaps it in, no reload
    page.wait_for_selector("#task-output:has-text('grandchild')", timeout=30_000)
    assert page.evaluate("window.pgbgLoaded === true")
    assert "started; spawning a grandchild" in page.inner_text("#task-log")
    page.screenshot(path=str(shots / "task-running.png"), full_page=True)

    page.click("button:has-text('Terminate')")
    page.wait_for_selector(".notice:has-text('Termination requested')")
    wait_for(lambda: pgbg.get_task(result).status == pgbg.TaskStatus.TERMINATED, timeout=60,
             message="the task to be terminated")
    wait_for(lambda: group_gone(pgid), timeout=60, message="the task's process group to go")
    page.wait_for_selector("#task-status:has-text('terminated')", timeout=30_000)
    page.screenshot(path=str(shots / "task-terminated.png"), full_page=True)

    for name, path in (("tasks", "/tasks"), ("failed", f"/tasks/{failed.id}"),
                       ("queue", "/queue"), ("workers", "/workers"),
                       ("periodic", "/periodic"), ("not-found", "/tasks/nope")):
        page.goto(server.url + path)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    # the not-found page's own 404 is the one expected console message
    problems = [p for p in problems if not (p.startswith(server.url + "/tasks/nope ")
                                            and "status of 404" in p)]
    context.close()
    print(f"\nscreenshots: {shots}")
    assert problems == []
