"""Fixtures for the real-browser tests: a real uvicorn serving the built SPA, and Chromium.

Needs `frontend/dist` (`npm --prefix frontend ci && npm --prefix frontend run build`) and
Debian's Chromium at /usr/bin/chromium. A failed test leaves a screenshot and the browser
console under tests/browser/output/.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

sys.path.insert(0, str(Path(__file__).parent))  # works whatever pytest's import mode

from browser_support import Server, launch_chromium, require_dist, run_server

OUTPUT = Path(__file__).parent / "output"
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Remember each phase's report, so fixtures can tell whether the test failed."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def _failed(item: pytest.Item) -> bool:
    reports = item.stash.get(REPORTS, {})
    return any(report.failed for report in reports.values())


# Package scope, not session: the browser tests share one server and one Chromium, and both are
# gone when they end. Sync Playwright runs an event loop in this thread; left open it would break
# the async tests collected after this package ("Cannot run the event loop while another loop
# is running").
@pytest.fixture(scope="package")
def server() -> Iterator[Server]:
    """The app under test, with a temporary store, shared by the browser tests."""
    try:
        require_dist()
        problem = None
    except RuntimeError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    with run_server() as running:
        yield running


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def make_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Page]]:
    """Opens a page in a fresh browser context (empty localStorage) on the given server."""
    contexts = []
    console: list[str] = []

    def make(base_url: str) -> Page:
        context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 860})
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda msg: console.append(_console_line(msg)))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        return page

    yield make

    if _failed(request.node):
        OUTPUT.mkdir(exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        pages = [page for context in contexts for page in context.pages]
        for index, page in enumerate(pages):
            suffix = f"-{index + 1}" if len(pages) > 1 else ""
            try:
                page.screenshot(path=OUTPUT / f"{name}{suffix}.png", full_page=True)
            except Exception as exc:  # noqa: BLE001 - a screenshot must not hide the failure
                console.append(f"(screenshot failed: {exc})")
        (OUTPUT / f"{name}.console.log").write_text("\n".join(console) + "\n")
    for context in contexts:
        context.close()


def _console_line(msg: ConsoleMessage) -> str:
    return f"{msg.type}: {msg.text}"


@pytest.fixture
def page(make_page: Callable[[str], Page], server: Server) -> Page:
    """A page of a fresh browser context on the shared server (relative URLs work: goto("/"))."""
    return make_page(server.url)
