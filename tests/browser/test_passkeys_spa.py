"""Passkeys and two-step verification in the SPA, in a real Chromium (see conftest.py).

Chromium's virtual authenticator (Chrome DevTools Protocol ``WebAuthn.addVirtualAuthenticator``,
through Playwright's CDP session) stands in for a phone or a fingerprint reader: a CTAP2 platform
authenticator with resident keys and user verification that always says yes. WebAuthn needs a
domain for its relying party (an IP address is refused), so these tests run a server of their own
with ``WEBAUTHN_RP_ID=localhost`` and open it as ``http://localhost:<port>``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyotp
import pytest
from browser_support import PASSWORD, login, message, register_and_login, require_dist, unique_username
from playwright.sync_api import CDPSession, Page, expect

from server import Server


@pytest.fixture(scope="module")
def localhost() -> Iterator[str]:
    """A server whose passkeys' relying party is ``localhost``; its base URL."""
    require_dist()
    with tempfile.TemporaryDirectory(prefix="passkey-tests-") as tmp:
        server = Server(Path(tmp) / "users.json")
        base = f"http://localhost:{server.port}"
        server.env |= {"WEBAUTHN_RP_ID": "localhost", "WEBAUTHN_ORIGINS": base}
        with server:
            yield base


def authenticator(page: Page) -> tuple[CDPSession, str]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    return cdp, added["authenticatorId"]


def panel(page: Page):
    return page.get_by_role("region", name="Account")


def logout(page: Page) -> None:
    page.get_by_role("button", name="Logout", exact=True).click()
    expect(message(page)).to_have_text("Logged out")


# Chromium offers conditional UI (passkeys among the username field's suggestions), and its
# virtual authenticator answers such a waiting request by itself, sometimes before the test
# clicks: this test drives the button, so the page is told the browser has no conditional UI.
NO_AUTOFILL = "PublicKeyCredential.isConditionalMediationAvailable = async () => false;"


def test_passkey_life_cycle(make_page: Callable[[str], Page], localhost: str) -> None:
    name = unique_username("pk")
    page = make_page(localhost)
    page.add_init_script(NO_AUTOFILL)
    cdp, authenticator_id = authenticator(page)
    page.goto("/")
    register_and_login(page, name)

    passkeys = panel(page).get_by_role("group", name="Passkeys")
    expect(passkeys).to_contain_text("No passkey yet")
    passkeys.get_by_label("Name (optional)").fill("This laptop")
    passkeys.get_by_role("button", name="Add a passkey").click()
    expect(message(page)).to_have_text("Passkey added; your other sessions are logged out")
    expect(passkeys.locator(".passkey-name")).to_have_text(["This laptop"])
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})["credentials"]
    assert len(credentials) == 1 and credentials[0]["isResidentCredential"]  # a discoverable credential
    assert credentials[0]["rpId"] == "localhost"

    logout(page)
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(message(page)).to_have_text(f"Logged in as {name}")
    expect(page.get_by_test_id("current-user")).to_have_text(name)
    expect(passkeys).not_to_contain_text("last used never")
    count = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})["credentials"][0]["signCount"]
    assert count >= 1

    passkeys.get_by_role("button", name="Remove passkey This laptop").click()
    expect(message(page)).to_have_text("Passkey removed; your other sessions are logged out")
    expect(passkeys).to_contain_text("No passkey yet")

    logout(page)  # the authenticator still holds the key; the server no longer accepts it
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(message(page)).to_have_text("Invalid passkey")
    expect(page.get_by_role("form", name="Login")).to_be_visible()


def test_two_step_verification(make_page: Callable[[str], Page], localhost: str) -> None:
    name = unique_username("tt")
    page = make_page(localhost)
    page.goto("/")
    register_and_login(page, name)
    two_step = panel(page).get_by_role("group", name="Two-step verification")
    two_step.get_by_label("Password to turn it on").fill(PASSWORD)
    two_step.get_by_role("button", name="Turn on two-step verification").click()
    expect(two_step.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    secret = two_step.locator(".totp-secret").inner_text()
    two_step.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    two_step.get_by_role("button", name="Confirm").click()
    expect(message(page)).to_have_text("Two-step verification is on; your other sessions are logged out")
    codes = two_step.locator(".recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    two_step.get_by_role("button", name="I have kept them").click()
    expect(two_step).to_contain_text("On: signing in with the password also asks for a code")

    logout(page)
    login(page, name)
    form = page.get_by_role("form", name="Two-step verification")
    expect(form).to_be_visible()
    form.get_by_label("Code from your authenticator app, or a recovery code").fill("000000")
    form.get_by_role("button", name="Verify").click()
    expect(message(page)).to_have_text("Invalid code")
    form.get_by_label("Code from your authenticator app, or a recovery code").fill(
        pyotp.TOTP(secret).at(time.time() + 30))  # the app's next code: the confirming one is spent
    form.get_by_role("button", name="Verify").click()
    expect(message(page)).to_have_text(f"Logged in as {name}")

    logout(page)
    login(page, name)
    form.get_by_label("Code from your authenticator app, or a recovery code").fill(codes[0])
    form.get_by_role("button", name="Verify").click()
    expect(message(page)).to_have_text(f"Logged in as {name}")
