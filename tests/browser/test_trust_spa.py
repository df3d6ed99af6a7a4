"""No stranger can keep a real user out, seen from the SPA in a real Chromium (see conftest.py).

The catalogue shows before the visitor has a token; past the service's bound on new visitors,
the SPA solves the proof-of-work challenge by itself (in a Web Worker) and the visitor keeps a
cart; with an account past its failure limit a fresh browser logs in after solving a challenge
("Checking your browser…" meanwhile), while a browser that logged in before sends its device
token and logs in without one, also after a logout.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from browser_support import (
    PASSWORD,
    Server,
    add_to_cart,
    api_client,
    catalogue_loaded,
    expect_cart,
    login,
    message,
    run_server,
    storage,
    unique_username,
    violations,
    watch,
)
from playwright.sync_api import Page, Request, Route, expect

PROGRESS = "Checking your browser…"


def recorded(page: Page) -> list[Request]:
    """Every request ``page`` sends from now on."""
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    return requests


def calls(requests: list[Request], method: str, path: str) -> list[Request]:
    return [r for r in requests if r.method == method and r.url.split("?")[0].endswith(path)]


def device_tokens(page: Page) -> dict[str, str]:
    """The SPA's device tokens (one per account that logged in in this browser), by username."""
    return page.evaluate("() => JSON.parse(localStorage.getItem('device_tokens') || '{}')")


def progress(page: Page):
    return page.get_by_test_id("challenge-progress")


def expect_challenge_required(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["challenge_required"] is True
    assert int(response.headers["retry-after"]) > 0


def push_past_its_limit(server: Server, name: str) -> None:
    """Wrong-password logins over HTTP until the account asks every untrusted login for a
    challenge, even one with the right password."""
    with api_client(server) as api:
        for _ in range(10):
            wrong = api.post("/users/login", json={"username": name, "password": "not-the-password"})
            if wrong.status_code != 401:
                expect_challenge_required(wrong)
                break
        expect_challenge_required(api.post("/users/login", json={"username": name, "password": PASSWORD}))


def test_the_catalogue_shows_without_a_token(page: Page) -> None:
    requests = recorded(page)
    page.goto("/")
    catalogue_loaded(page)
    expect(page.get_by_test_id("cart-empty")).to_be_visible()

    assert calls(requests, "POST", "/anonymous-login") == []
    items = calls(requests, "GET", "/items/")
    assert items and all("authorization" not in r.headers for r in items)
    assert storage(page)["anonymous_token"] is None

    # Something kept on the server (the cart) asks for a visitor token, once.
    add_to_cart(page, 1)
    expect_cart(page, {1: 1})
    assert len(calls(requests, "POST", "/anonymous-login")) == 1
    assert storage(page)["anonymous_token"]


def test_past_the_new_visitor_bound_the_spa_solves_the_challenge_and_keeps_a_cart(
    make_page: Callable[[str], Page],
) -> None:
    with run_server(ANONYMOUS_LOGIN_GLOBAL_LIMIT=1, CHALLENGE_MAX_NUMBER=5000) as server:
        with api_client(server) as api:
            assert api.post("/anonymous-login").status_code == 200  # the bound is used up
            expect_challenge_required(api.post("/anonymous-login"))

        page = make_page(server.url)
        problems = watch(page)
        requests = recorded(page)
        page.goto("/")
        catalogue_loaded(page)
        add_to_cart(page, 2)
        expect_cart(page, {2: 1})

        logins = calls(requests, "POST", "/anonymous-login")
        assert len(logins) == 2  # refused, then admitted with the solution
        assert logins[0].post_data is None
        assert set(json.loads(logins[1].post_data)) == {"altcha"}
        assert logins[1].response().status == 200
        assert len(calls(requests, "GET", "/challenge")) == 1
        visitor = storage(page)["anonymous_token"]
        assert visitor

        page.reload()  # the cart is the server's, kept for this visitor
        catalogue_loaded(page)
        expect_cart(page, {2: 1})
        assert storage(page)["anonymous_token"] == visitor
        assert len(calls(requests, "POST", "/anonymous-login")) == 2
        # The worker ran under the SPA's strict policy.
        assert violations(page) == [] and problems == [], (violations(page), problems)


def test_past_the_account_limit_a_new_browser_solves_a_challenge_and_a_known_one_does_not(
    make_page: Callable[[str], Page],
) -> None:
    with run_server(LOGIN_MAX_FAILURES_PER_ACCOUNT=3, LOGIN_MAX_FAILURES=0, CHALLENGE_MAX_NUMBER=5000) as server:
        name = unique_username("trust")
        with api_client(server) as api:
            assert api.post("/users/register", json={"username": name, "password": PASSWORD}).status_code == 201

        # A browser logs in before the trouble starts, then logs out: it keeps its device token.
        known = make_page(server.url)
        known.goto("/")
        login(known, name)
        expect(message(known)).to_have_text(f"Logged in as {name}")
        device = device_tokens(known)[name]
        known.get_by_role("button", name="Logout").click()
        expect(message(known)).to_have_text("Logged out")
        assert storage(known)["jwt"] is None
        assert device_tokens(known) == {name: device}

        # A stranger pushes the account past its failure limit; the browser that logged in before
        # sends its device token and logs in with no challenge, twice over (after each logout).
        requests = recorded(known)
        for _ in range(2):
            push_past_its_limit(server, name)
            login(known, name)
            expect(message(known)).to_have_text(f"Logged in as {name}")
            known.get_by_role("button", name="Logout").click()
            expect(message(known)).to_have_text("Logged out")
        logins = calls(requests, "POST", "/users/login")
        assert [r.response().status for r in logins] == [200, 200]
        assert [json.loads(r.post_data).get("device_token") for r in logins] == [device, device]
        assert calls(requests, "GET", "/challenge") == []
        assert PROGRESS not in progress(known).inner_text()

        # A fresh browser: told to solve a challenge, it does, with the progress message shown
        # meanwhile (the challenge is held back until the message has been seen).
        push_past_its_limit(server, name)
        fresh = make_page(server.url)
        problems = watch(fresh)
        requests = recorded(fresh)
        held: list[Route] = []
        fresh.route("**/challenge", lambda route: held.append(route))
        fresh.goto("/")
        login(fresh, name)
        expect(progress(fresh)).to_contain_text(PROGRESS)
        assert len(held) == 1
        held[0].continue_()
        expect(message(fresh)).to_have_text(f"Logged in as {name}")
        expect(progress(fresh)).to_have_text("")
        logins = calls(requests, "POST", "/users/login")
        assert [r.response().status for r in logins] == [429, 200]
        assert "altcha" not in json.loads(logins[0].post_data)
        assert json.loads(logins[1].post_data)["altcha"]
        assert device_tokens(fresh)[name] not in (None, device)
        assert violations(fresh) == [] and problems == [], (violations(fresh), problems)


def test_the_known_browser_keeps_its_device_token_on_the_shared_server(page: Page, server: Server) -> None:
    """On the default settings nothing asks for a challenge: a login stores a device token, and a
    logout keeps it while the session tokens go."""
    name = unique_username("dev")
    with api_client(server) as api:
        assert api.post("/users/register", json={"username": name, "password": PASSWORD}).status_code == 201
    requests = recorded(page)
    page.goto("/")
    login(page, name)
    expect(message(page)).to_have_text(f"Logged in as {name}")
    device = device_tokens(page)[name]
    page.get_by_role("button", name="Logout").click()
    expect(message(page)).to_have_text("Logged out")
    assert storage(page) == {"jwt": None, "refresh_token": None, "anonymous_token": None}
    assert device_tokens(page) == {name: device}
    login(page, name)
    expect(message(page)).to_have_text(f"Logged in as {name}")
    logins = calls(requests, "POST", "/users/login")
    assert "device_token" not in json.loads(logins[0].post_data)
    assert json.loads(logins[1].post_data)["device_token"] == device
    assert calls(requests, "GET", "/challenge") == []
