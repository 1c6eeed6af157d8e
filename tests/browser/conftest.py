"""Browser tier fixtures: the real frontend served by the real host, in Debian's headless Chromium.

Every test fails on anything a user would see go wrong, on load and after whatever the test did:
an uncaught page error, a console error, a warn/error toast or an alert dialog (tools.browser_watch;
offline-only noise is allowed there by name)."""

from __future__ import annotations

import pytest
from browser.ui_ready import wait_until_interactive

from tools.browser_watch import Watch

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic"]
APP_READY_JS = "() => window.app && window.app.graph && window.app.extensionManager"


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=ARGS, headless=True)
        yield b
        b.close()


def open_app(pg, url: str) -> None:
    """Load the frontend and wait until the app is up (the one place to add more readiness waits)."""
    pg.goto(url, wait_until="domcontentloaded")
    pg.wait_for_function(APP_READY_JS, timeout=90_000)
    wait_until_interactive(pg)  # nothing clicks before a user could: no blocking mask, graph loaded


@pytest.fixture
def page(browser, server, request):
    from conftest import ARTIFACTS

    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.watch = Watch(pg)
    pg.js_errors = pg.watch.page_errors
    open_app(pg, server.url)
    yield pg
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    ctx.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """After the test body: fail it on anything the user saw go wrong (errors, toasts, alerts)."""
    outcome = yield
    pg = item.funcargs.get("page")
    if pg is None or outcome.excinfo is not None:
        return
    pg.wait_for_timeout(300)  # let a toast from the last action render
    problems = pg.watch.problems()
    if problems:
        outcome.force_exception(AssertionError(pg.watch.report()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
