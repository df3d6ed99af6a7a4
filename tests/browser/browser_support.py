"""Shared by the browser tests and make_screenshot.py: a real uvicorn server, Chromium, UI steps.

Nothing here is a test; conftest.py turns these helpers into fixtures.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Playwright, expect

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # tests/server.py, also when make_screenshot.py runs alone

from server import Server

DIST_INDEX = REPO / "frontend" / "dist" / "index.html"
BUILD_COMMAND = "npm --prefix frontend ci && npm --prefix frontend run build"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PASSWORD = "correct-horse-42"
EXPIRED_MESSAGE = "Your session has expired or is invalid, please log in again."


def unique_username(prefix: str = "u") -> str:
    """A fresh valid username (3-15 characters), so tests can share one server."""
    return f"{prefix}{secrets.token_hex(5)}"[:15]


def require_dist() -> None:
    if not DIST_INDEX.is_file():
        raise RuntimeError(
            f"{DIST_INDEX.relative_to(REPO)} is missing: the browser tests need the built SPA. "
            f"Run `{BUILD_COMMAND}` from {REPO} first."
        )


# --- the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def run_server(**settings: str | float) -> Iterator[Server]:
    """``tests/server.py``'s real ``uvicorn app:app``, on a temporary store; stopped afterwards.

    Keyword arguments are extra environment settings, e.g. ACCESS_TOKEN_EXPIRE_MINUTES=0.05.
    """
    with tempfile.TemporaryDirectory(prefix="browser-tests-") as tmp, \
            Server(Path(tmp) / "users.json", **{key: str(value) for key, value in settings.items()}) as server:
        yield server


def api_client(server: Server) -> httpx.Client:
    """The API straight over HTTP, beside the browser."""
    return httpx.Client(base_url=server.url, timeout=10)


# --- the browser --------------------------------------------------------------------------


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def storage(page: Page) -> dict[str, str | None]:
    """The SPA's tokens in localStorage."""
    return page.evaluate(
        """() => Object.fromEntries(['jwt', 'refresh_token', 'anonymous_token']
                 .map((key) => [key, localStorage.getItem(key)]))"""
    )


def jwt_claims(token: str) -> dict:
    """The payload of a JWT, unverified (to read its exp)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- what the page reports (also the CSP test's) ---------------------------------------------

# Records `securitypolicyviolation` events; an init script is injected by the browser itself, so
# the page's own CSP does not stop it.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || 'inline'}`);
});
"""


def watch(page: Page) -> list[str]:
    """Console errors and CSP violations of ``page`` from now on. Chromium also logs every 4xx
    answer as a console error ("Failed to load resource"); those are expected answers here."""
    problems: list[str] = []
    page.add_init_script(RECORD_VIOLATIONS)

    def on_console(msg: ConsoleMessage) -> None:
        expected = re.match(r"Failed to load resource: the server responded with a status of 4\d\d", msg.text)
        if (msg.type == "error" and not expected) or "Content Security Policy" in msg.text:
            problems.append(f"console {msg.type}: {msg.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    return problems


def violations(page: Page) -> list[str]:
    return page.evaluate("() => window.__cspViolations")


# --- UI steps -------------------------------------------------------------------------------


def message(page: Page) -> Locator:
    return page.get_by_role("status")


def _submit(page: Page, form_name: str, toggle: str, username: str, password: str) -> None:
    """Open the Login or Register form (the toggle shows the other one) and submit it."""
    expect(page.get_by_role("form")).to_be_visible()  # Login or Register, once the page is ready
    form = page.get_by_role("form", name=form_name)
    if not form.is_visible():
        page.get_by_role("button", name=toggle).click()
    form.get_by_label("Username").fill(username)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name=form_name, exact=True).click()


def register(page: Page, username: str, password: str = PASSWORD) -> None:
    """Submit the Register form (the outcome is left to the caller to check)."""
    _submit(page, "Register", "Create an account", username, password)


def login(page: Page, username: str, password: str = PASSWORD) -> None:
    _submit(page, "Login", "I already have an account", username, password)


def register_and_login(page: Page, username: str, password: str = PASSWORD) -> None:
    register(page, username, password)
    expect(message(page)).to_have_text(f"Registered {username}, please log in")
    login(page, username, password)
    expect(message(page)).to_have_text(f"Logged in as {username}")
    expect(page.get_by_test_id("current-user")).to_have_text(username)


def catalogue_loaded(page: Page) -> None:
    expect(page.get_by_test_id("item-1")).to_be_visible()
    expect(page.locator(".shop")).to_have_attribute("aria-busy", "false")


def add_to_cart(page: Page, item_id: int) -> None:
    page.get_by_test_id(f"item-{item_id}").get_by_role("button", name="Add to cart").click()


def shop(page: Page, *item_ids: int) -> dict[int, int]:
    """Add the items one click at a time, checking the cart after each; the final quantities."""
    cart: dict[int, int] = {}
    for item_id in item_ids:
        add_to_cart(page, item_id)
        cart[item_id] = cart.get(item_id, 0) + 1
        expect_cart(page, cart)
    return cart


def expect_cart(page: Page, quantities: dict[int, int]) -> None:
    """The cart shows exactly these items with these quantities."""
    rows = page.get_by_role("list", name="Cart items").get_by_role("listitem")
    expect(rows).to_have_count(len(quantities))
    for item_id, quantity in quantities.items():
        expect(page.get_by_test_id(f"cart-item-{item_id}").get_by_test_id("quantity")).to_have_text(f"× {quantity}")
