"""The SPA and Swagger UI in a real Chromium, against a real uvicorn (see conftest.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from browser_support import (
    EXPIRED_MESSAGE,
    PASSWORD,
    Server,
    add_to_cart,
    api_client,
    catalogue_loaded,
    expect_cart,
    jwt_claims,
    login,
    message,
    register,
    register_and_login,
    run_server,
    shop,
    storage,
    unique_username,
)
from playwright.sync_api import Page, Request, expect

LOGGED_OUT_TEXT = "Please log in to see all the users"


def test_register_login_reload_logout(page: Page) -> None:
    name = unique_username()
    page.goto("/")
    expect(page.get_by_text(LOGGED_OUT_TEXT)).to_be_visible()

    register_and_login(page, name)
    users = page.get_by_role("list", name="All users")
    expect(users.get_by_role("listitem").filter(has_text=re.compile(f"^{name}$"))).to_have_count(1)
    stored = storage(page)
    assert stored["jwt"] and stored["refresh_token"]
    assert stored["anonymous_token"] is None  # the visitor became this account

    page.reload()
    expect(message(page)).to_have_text(f"Welcome back, {name}!")
    expect(users.get_by_role("listitem").filter(has_text=re.compile(f"^{name}$"))).to_have_count(1)
    expect(page.get_by_role("form", name="Login")).to_have_count(0)

    page.get_by_role("button", name="Logout").click()
    expect(page.get_by_text(LOGGED_OUT_TEXT)).to_be_visible()
    expect(users).to_have_count(0)
    expect(page.get_by_role("form", name="Login")).to_be_visible()
    expect(message(page)).to_have_text("Logged out")
    stored = storage(page)
    assert stored["jwt"] is None
    assert stored["refresh_token"] is None
    # ... and the visitor goes on browsing, with no token until it keeps something on the server.
    catalogue_loaded(page)
    assert storage(page)["anonymous_token"] is None


def test_wrong_password_and_duplicate_username(page: Page) -> None:
    name = unique_username()
    page.goto("/")
    register(page, name)
    expect(message(page)).to_have_text(f"Registered {name}, please log in")

    login(page, name, "not-the-password")
    expect(message(page)).to_have_text("Invalid username and/or password")
    expect(page.get_by_text(LOGGED_OUT_TEXT)).to_be_visible()
    assert storage(page)["jwt"] is None

    register(page, name)
    expect(message(page)).to_have_text("Username already taken")

    # A 422 list of validation errors is shown as readable text, not as JSON.
    register(page, "ab", "short")
    expect(message(page)).to_contain_text("username:")
    expect(message(page)).to_contain_text("password:")
    expect(message(page)).not_to_contain_text("[{")


def test_tampered_token_is_rejected_on_reload(page: Page, server: Server) -> None:
    name = unique_username()
    page.goto("/")
    register_and_login(page, name)

    token = storage(page)["jwt"]
    header, payload, signature = token.split(".")
    # Change a character in the middle of the signature (the last one may only carry padding bits).
    index = len(signature) // 2
    changed = "A" if signature[index] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:index]}{changed}{signature[index + 1 :]}"
    page.evaluate(
        """(token) => { localStorage.setItem('jwt', token); localStorage.removeItem('refresh_token'); }""",
        tampered,
    )
    with api_client(server) as api:  # the server itself refuses it
        refused = api.get("/users/me", headers={"Authorization": f"Bearer {tampered}"})
    assert refused.status_code == 401, refused.text

    page.reload()
    expect(message(page)).to_have_text(EXPIRED_MESSAGE)
    expect(page.get_by_role("form", name="Login")).to_be_visible()
    expect(page.get_by_text(LOGGED_OUT_TEXT)).to_be_visible()
    stored = storage(page)
    assert stored["jwt"] is None and stored["refresh_token"] is None
    # The visitor can still browse (no token yet) and shop anonymously.
    catalogue_loaded(page)
    expect(page.get_by_test_id("greeting")).to_contain_text("Hello, visitor!")
    shop(page, 2)
    expect(page.get_by_test_id("greeting")).to_contain_text("anonymous visitor")


def test_anonymous_cart_moves_into_the_account(page: Page, server: Server) -> None:
    page.goto("/")
    catalogue_loaded(page)
    expect(page.get_by_test_id("greeting")).to_contain_text("Hello, visitor!")  # no token yet
    expect(page.get_by_test_id("cart-empty")).to_be_visible()

    shop(page, 1, 3, 1)  # the cart is checked after each click: {1: 1}, {1: 1, 3: 1}, {1: 2, 3: 1}
    expect(page.get_by_test_id("greeting")).to_contain_text("anonymous visitor")
    anonymous = storage(page)["anonymous_token"]
    assert anonymous

    page.reload()
    catalogue_loaded(page)
    expect_cart(page, {1: 2, 3: 1})
    assert storage(page)["anonymous_token"] == anonymous  # same visitor after the reload

    name = unique_username()
    register_and_login(page, name)
    expect(page.get_by_test_id("greeting")).to_contain_text(f"Hello, {name}!")
    expect_cart(page, {1: 2, 3: 1})
    stored = storage(page)
    assert stored["anonymous_token"] is None

    # The server agrees: this is the account's cart now, and the visitor is gone.
    with api_client(server) as api:
        cart = api.get("/cart", headers={"Authorization": f"Bearer {stored['jwt']}"})
        assert cart.status_code == 200, cart.text
        assert cart.json() == {"items": [{"item_id": 1, "quantity": 2}, {"item_id": 3, "quantity": 1}]}
        old_visitor = api.get("/cart", headers={"Authorization": f"Bearer {anonymous}"})
        assert old_visitor.status_code == 401

    # Removing works on the account's cart.
    page.get_by_test_id("cart-item-3").get_by_role("button", name="Remove").click()
    expect_cart(page, {1: 2})


def test_swagger_ui_authorize_and_call_users_me(make_page: Callable[[str], Page], server: Server) -> None:
    name = unique_username()
    with api_client(server) as api:
        created = api.post("/users/register", json={"username": name, "password": PASSWORD})
        assert created.status_code == 201, created.text
        logged_in = api.post("/users/login", json={"username": name, "password": PASSWORD})
        assert logged_in.status_code == 200, logged_in.text
    token = logged_in.json()["token"]

    page = make_page(server.url)
    page.context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())  # no CDN
    page.goto("/docs")
    page.get_by_role("button", name="Authorize", exact=True).click()
    dialog = page.locator(".modal-ux")
    expect(dialog.get_by_text("HTTPBearer")).to_be_visible()
    dialog.locator("#auth-bearer-value").fill(token)
    dialog.get_by_role("button", name="Apply credentials").click()
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_have_count(0)

    operation = page.locator(".opblock-get", has=page.locator('[data-path="/users/me"]'))
    operation.locator(".opblock-summary-control").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()

    response = operation.locator(".live-responses-table .response")
    expect(response.locator(".response-col_status")).to_have_text("200")
    expect(response.locator(".response-col_description")).to_contain_text(f'"username": "{name}"')
    curl = operation.locator(".curl-command")
    expect(curl).to_contain_text(f"Authorization: Bearer {token}")


def test_session_outlives_the_access_token(make_page: Callable[[str], Page]) -> None:
    with run_server(ACCESS_TOKEN_EXPIRE_MINUTES=0.05) as server:  # 3-second access tokens
        page = make_page(server.url)
        refreshes: list[Request] = []
        page.on(
            "request", lambda request: refreshes.append(request) if request.url.endswith("/users/refresh") else None
        )

        def wait_until_expired(token: str) -> None:
            expires = jwt_claims(token)["exp"]
            time.sleep(max(0.0, expires - time.time() + 0.3))
            with api_client(server) as api:
                response = api.get("/users/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401 and response.json()["detail"] == "Signature has expired"

        name = unique_username()
        page.goto("/")
        register_and_login(page, name)
        catalogue_loaded(page)
        first = storage(page)["jwt"]
        assert refreshes == []

        # A call after the access token expired refreshes it transparently and goes through.
        wait_until_expired(first)
        add_to_cart(page, 2)
        expect_cart(page, {2: 1})
        second = storage(page)["jwt"]
        assert second != first
        assert len(refreshes) == 1
        expect(page.get_by_test_id("current-user")).to_have_text(name)

        # On a reload several calls get a 401 at once: exactly one refresh, still logged in.
        wait_until_expired(second)
        page.reload()
        expect(message(page)).to_have_text(f"Welcome back, {name}!")
        catalogue_loaded(page)
        expect_cart(page, {2: 1})
        expect(page.get_by_role("list", name="All users").get_by_text(name, exact=True)).to_be_visible()
        third = storage(page)
        assert third["jwt"] not in (first, second)
        assert len(refreshes) == 2

        # Logout revokes the session: its access and refresh tokens are refused afterwards.
        refreshes_before = len(refreshes)
        page.get_by_role("button", name="Logout").click()
        expect(page.get_by_text(LOGGED_OUT_TEXT)).to_be_visible()
        assert storage(page)["jwt"] is None
        if len(refreshes) > refreshes_before:  # (slow run: the token expired first, the SPA refreshed it)
            body = refreshes[-1].response().json()
            access, refresh = body["token"], body["refresh_token"]
        else:
            access, refresh = third["jwt"], third["refresh_token"]
        with api_client(server) as api:
            me = api.get("/users/me", headers={"Authorization": f"Bearer {access}"})
            assert me.status_code == 401
            if time.time() < jwt_claims(access)["exp"] - 0.5:  # not expired yet: refused because of the logout
                assert me.json()["detail"] == "Invalid token"
            again = api.post("/users/refresh", json={"refresh_token": refresh})
            assert again.status_code == 401, again.text
