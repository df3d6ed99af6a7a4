"""The SPA's account panel and the Content-Security-Policy, in a real Chromium (see conftest.py)."""

from __future__ import annotations

import re
from collections.abc import Callable

from browser_support import (
    EXPIRED_MESSAGE,
    PASSWORD,
    Server,
    catalogue_loaded,
    login,
    message,
    register_and_login,
    storage,
    unique_username,
    violations,
    watch,
)
from playwright.sync_api import Page, expect

NEW_PASSWORD = "battery-staple-43"
WRONG_PASSWORD = "The password is wrong"

def account_panel(page: Page):
    return page.get_by_role("region", name="Account")


def change_password(page: Page, current: str, new: str) -> None:
    form = account_panel(page).get_by_role("form", name="Change password")
    form.get_by_label("Current password").fill(current)
    form.get_by_label("New password").fill(new)
    form.get_by_role("button", name="Change password").click()


def delete_account(page: Page, password: str) -> None:
    form = account_panel(page).get_by_role("form", name="Delete account")
    form.get_by_label("Password to confirm").fill(password)
    form.get_by_role("button", name="Delete my account").click()


def test_change_password_logs_out_the_other_browser(make_page: Callable[[str], Page], server: Server) -> None:
    name = unique_username("pw")
    here, there = make_page(server.url), make_page(server.url)  # two browser contexts: two devices
    problems = watch(here)
    here.goto("/")
    register_and_login(here, name)
    there.goto("/")
    login(there, name)
    expect(message(there)).to_have_text(f"Logged in as {name}")

    change_password(here, "not-the-password", NEW_PASSWORD)  # the error is shown, nothing changes
    expect(message(here)).to_have_text(WRONG_PASSWORD)
    expect(account_panel(here).get_by_label("Current password")).to_have_value("")

    change_password(here, PASSWORD, NEW_PASSWORD)
    expect(message(here)).to_have_text("Password changed; your other sessions are logged out")

    # The other device is logged out on its next request ...
    there.reload()
    expect(message(there)).to_have_text(EXPIRED_MESSAGE)
    expect(there.get_by_role("form", name="Login")).to_be_visible()
    assert storage(there)["jwt"] is None
    # ... this one stays logged in.
    here.reload()
    expect(message(here)).to_have_text(f"Welcome back, {name}!")

    login(there, name, PASSWORD)
    expect(message(there)).to_have_text("Invalid username and/or password")
    login(there, name, NEW_PASSWORD)
    expect(message(there)).to_have_text(f"Logged in as {name}")
    assert problems == [], problems
    assert violations(here) == []


def test_delete_account_asks_for_the_password(page: Page) -> None:
    name = unique_username("del")
    problems = watch(page)
    page.goto("/")
    register_and_login(page, name)

    delete_account(page, "not-the-password")
    expect(message(page)).to_have_text(WRONG_PASSWORD)
    expect(page.get_by_test_id("current-user")).to_have_text(name)

    delete_account(page, PASSWORD)
    expect(message(page)).to_have_text("Account deleted")
    expect(page.get_by_role("form", name="Login")).to_be_visible()
    expect(account_panel(page)).to_have_count(0)
    assert storage(page)["jwt"] is None
    catalogue_loaded(page)  # a visitor again, with no token until it keeps something on the server
    assert storage(page)["anonymous_token"] is None

    login(page, name)
    expect(message(page)).to_have_text("Invalid username and/or password")
    assert problems == [], problems


def test_log_out_everywhere(make_page: Callable[[str], Page], server: Server) -> None:
    name = unique_username("all")
    here, there = make_page(server.url), make_page(server.url)
    here.goto("/")
    register_and_login(here, name)
    there.goto("/")
    login(there, name)
    expect(message(there)).to_have_text(f"Logged in as {name}")

    account_panel(here).get_by_role("button", name="Log out everywhere").click()
    expect(message(here)).to_have_text("Logged out on every device")
    expect(here.get_by_role("form", name="Login")).to_be_visible()
    there.reload()
    expect(message(there)).to_have_text(EXPIRED_MESSAGE)


def test_the_spa_runs_under_its_csp_without_a_violation(page: Page) -> None:
    problems = watch(page)
    response = page.goto("/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    catalogue_loaded(page)
    register_and_login(page, unique_username("csp"))
    catalogue_loaded(page)
    assert violations(page) == [] and problems == [], (violations(page), problems)

    # The policy is enforced (so the checks above can fail): an injected inline script does not run.
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.__injected = true'; document.head.appendChild(s); }""")
    page.wait_for_function("() => window.__cspViolations.length > 0")
    assert page.evaluate("() => window.__injected") is None
    assert any("script-src" in v for v in violations(page)), violations(page)


def test_swagger_ui_runs_under_its_csp(make_page: Callable[[str], Page], server: Server) -> None:
    page = make_page(server.url)
    problems = watch(page)
    page.context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())  # no CDN
    response = page.goto("/docs")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "'sha256-" in policy and "script-src 'self' 'unsafe-inline'" not in policy
    expect(page.get_by_role("button", name="Authorize", exact=True)).to_be_visible()
    operation = page.locator(".opblock-get", has=page.locator('[data-path="/users/me"]'))
    operation.locator(".opblock-summary-control").click()
    expect(operation.get_by_role("button", name="Try it out")).to_be_visible()
    assert violations(page) == [] and problems == [], (violations(page), problems)
