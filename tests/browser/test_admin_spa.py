"""Each user's devices and security activity, and the Administration page (issue #20), in a real
Chromium against a real server (see conftest.py): "This device" marked, another device signed
out from here, the activity listed; an administrator finding, disabling, enabling and promoting
an account and reading the audit log, and nobody else seeing the page.
"""

from __future__ import annotations

from collections.abc import Callable

from browser_support import (
    EXPIRED_MESSAGE,
    PASSWORD,
    Server,
    login,
    message,
    register_and_login,
    unique_username,
    violations,
    watch,
)
from playwright.sync_api import Page, expect
from test_admin import manage


def devices(page: Page):
    return page.get_by_role("list", name="Your devices").get_by_test_id("device")


def activity(page: Page):
    return page.get_by_role("list", name="Recent security activity").get_by_test_id("activity-event")


def test_a_user_sees_their_devices_and_signs_one_out(make_page: Callable[[str], Page], server: Server) -> None:
    name = unique_username("dev")
    here, there = make_page(server.url), make_page(server.url)  # two browser contexts: two devices
    problems = watch(here)
    here.goto("/")
    register_and_login(here, name)
    there.goto("/")
    login(there, name, "wrong-password-1")
    expect(message(there)).to_have_text("Invalid username and/or password")
    login(there, name)
    expect(message(there)).to_have_text(f"Logged in as {name}")

    here.reload()
    expect(message(here)).to_have_text(f"Welcome back, {name}!")
    expect(devices(here)).to_have_count(2)
    mine = devices(here).filter(has_text="This device")
    expect(mine).to_have_count(1)
    expect(devices(here).first).not_to_contain_text("This device")  # newest first: the other browser's
    expect(devices(here).first).to_contain_text("127.0.0.1")
    expect(activity(here)).to_have_count(4)  # register, login, a failed login, login (newest first)
    expect(activity(here).nth(1)).to_contain_text("Failed sign-in")
    expect(activity(here).nth(1)).to_contain_text("from 127.0.0.1")

    devices(here).filter(has_not_text="This device").get_by_role("button", name="Sign out").click()
    expect(message(here)).to_have_text("Signed that device out")
    expect(devices(here)).to_have_count(1)
    expect(devices(here).first).to_contain_text("This device")
    expect(activity(here).first).to_contain_text("A device was signed out")

    there.reload()  # the other browser's tokens are refused now
    expect(message(there)).to_have_text(EXPIRED_MESSAGE)
    expect(there.get_by_role("form", name="Login")).to_be_visible()

    mine.get_by_role("button", name="Sign out").click()  # this device: a logout
    expect(message(here)).to_have_text("Logged out")
    assert problems == [], problems
    assert violations(here) == []


def test_an_administrator_manages_accounts_and_reads_the_audit_log(make_page: Callable[[str], Page],
                                                                  server: Server) -> None:
    boss, user = unique_username("boss"), unique_username("usr")
    admin_page, user_page = make_page(server.url), make_page(server.url)
    problems = watch(admin_page)
    user_page.goto("/")
    register_and_login(user_page, user)
    expect(user_page.get_by_role("button", name="Administration")).to_have_count(0)  # not an administrator

    created = manage(server.env, "create-user", boss, "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    admin_page.goto("/")
    login(admin_page, boss)
    expect(message(admin_page)).to_have_text(f"Logged in as {boss}")
    admin_page.get_by_role("button", name="Administration").click()
    panel = admin_page.get_by_role("region", name="Administration")
    expect(panel).to_be_visible()

    search = panel.get_by_role("search", name="Search users")
    search.get_by_label("Username starts with").fill(user[:6].upper())  # case-insensitive prefix
    search.get_by_role("button", name="Search").click()
    row = panel.get_by_role("row", name=user)
    expect(row).to_be_visible()
    expect(panel.get_by_role("row", name=boss)).to_have_count(0)
    expect(row).to_contain_text("active")

    row.get_by_role("button", name="Disable").click()
    expect(message(admin_page)).to_have_text(f"{user} disabled; its sessions ended")
    expect(row).to_contain_text("disabled")
    user_page.reload()
    expect(message(user_page)).to_have_text(EXPIRED_MESSAGE)
    login(user_page, user)
    expect(message(user_page)).to_have_text("Account disabled")

    row.get_by_role("button", name="Enable").click()
    expect(message(admin_page)).to_have_text(f"{user} enabled")
    row.get_by_role("button", name="Unlock").click()
    expect(message(admin_page)).to_have_text(f"{user} unlocked")
    row.get_by_role("button", name="Make admin").click()
    expect(message(admin_page)).to_have_text(f"{user} is now an administrator")
    expect(row).to_contain_text("admin")

    login(user_page, user)
    expect(message(user_page)).to_have_text(f"Logged in as {user}")
    expect(user_page.get_by_role("button", name="Administration")).to_be_visible()

    panel.get_by_role("button", name="Refresh the audit log").click()
    events = panel.get_by_test_id("audit-event")
    expect(events.first).to_contain_text("login")
    for shown in (f"admin_grant {user} by {boss}", f"admin_unlock {user} by {boss}",
                  f"admin_enable {user} by {boss}", f"admin_disable {user} by {boss}"):
        expect(events.filter(has_text=shown)).to_have_count(1)
    expect(events.filter(has_text=f"login_failed {user}")).to_have_count(1)  # the disabled account's attempt
    assert problems == [], problems
    assert violations(admin_page) == []
