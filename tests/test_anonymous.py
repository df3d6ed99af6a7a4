"""Anonymous visitors: their token, their cart, and the upgrade into an account."""

import asyncio
import time
from pathlib import Path

import jwt
import pytest

from conftest import Client, bearer, make_settings, running, seed_store

pytestmark = pytest.mark.anyio


async def test_anonymous_token_claims(client: Client) -> None:
    response = await client.post("/anonymous-login")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 30 * 86400
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"].startswith("anonymous_") and len(claims["sub"]) == len("anonymous_") + 36
    assert claims["exp"] - claims["iat"] == 30 * 86400
    visitor = await client.app.state.store.get_anonymous(claims["sub"])  # type: ignore[attr-defined]
    assert visitor.created_at == visitor.last_active_at > time.time() - 60


async def test_public_data_needs_nothing(client: Client) -> None:
    assert (await client.get("/public-data")).status_code == 200


async def test_items_for_everyone_and_greeting_each_caller(client: Client) -> None:
    nobody = await client.get("/items/")  # the catalogue needs no token (issue 18); a bad one is a 401
    assert nobody.status_code == 200 and "visitor" in nobody.json()["message"]
    anonymous = await client.get("/items/", headers=bearer(await client.anonymous()))
    registered = await client.get("/items/", headers=bearer(await client.token_for("marko")))
    assert anonymous.status_code == registered.status_code == 200
    assert "anonymous" in anonymous.json()["message"] and "marko" in registered.json()["message"]
    items = anonymous.json()["items"]
    assert items and all(set(i) == {"id", "name", "price", "category"} for i in items)


async def test_anonymous_token_on_registered_routes_is_403(client: Client) -> None:
    token = await client.anonymous()
    for path in ("/users/me", "/users/list"):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 403
        assert response.json() == {"detail": "Registered account required"}


async def test_cart_add_update_remove_and_errors(client: Client) -> None:
    auth = bearer(await client.anonymous())
    assert (await client.get("/cart", headers=auth)).json() == {"items": []}
    assert (await client.put("/cart/items/2", json={"quantity": 3}, headers=auth)).status_code == 200
    cart = (await client.put("/cart/items/1", json={"quantity": 1}, headers=auth)).json()
    assert cart == {"items": [{"item_id": 1, "quantity": 1}, {"item_id": 2, "quantity": 3}]}
    cart = (await client.put("/cart/items/2", json={"quantity": 5}, headers=auth)).json()
    assert cart["items"][1] == {"item_id": 2, "quantity": 5}
    assert (await client.delete("/cart/items/1", headers=auth)).json() == {"items": [{"item_id": 2, "quantity": 5}]}
    assert (await client.delete("/cart/items/1", headers=auth)).status_code == 404
    assert (await client.put("/cart/items/999", json={"quantity": 1}, headers=auth)).status_code == 404
    for bad in (0, -1, 1.5, "2", None, 10**6):
        assert (await client.put("/cart/items/1", json={"quantity": bad}, headers=auth)).status_code == 422, bad
    assert (await client.put("/cart/items/abc", json={"quantity": 1}, headers=auth)).status_code == 422
    assert (await client.get("/cart")).status_code == 401


async def test_carts_are_isolated(client: Client) -> None:
    first, second = bearer(await client.anonymous()), bearer(await client.anonymous())
    await client.put("/cart/items/1", json={"quantity": 2}, headers=first)
    await client.put("/cart/items/3", json={"quantity": 1}, headers=second)
    assert (await client.get("/cart", headers=first)).json() == {"items": [{"item_id": 1, "quantity": 2}]}
    assert (await client.get("/cart", headers=second)).json() == {"items": [{"item_id": 3, "quantity": 1}]}


@pytest.mark.parametrize("route", ["register", "login"])
async def test_upgrade_merges_the_cart_and_ends_the_visitor(client: Client, route: str) -> None:
    owner = bearer(await client.token_for("marko", "marko123"))
    await client.put("/cart/items/1", json={"quantity": 2}, headers=owner)  # the account's own cart
    anonymous = await client.anonymous()
    await client.put("/cart/items/1", json={"quantity": 3}, headers=bearer(anonymous))
    await client.put("/cart/items/4", json={"quantity": 1}, headers=bearer(anonymous))
    if route == "register":
        assert (await client.register("newbie", "password123", token=anonymous)).status_code == 201
        owner = bearer(await client.token_for("newbie"))
        expected = [{"item_id": 1, "quantity": 3}, {"item_id": 4, "quantity": 1}]
    else:
        assert (await client.login("marko", "marko123", token=anonymous)).status_code == 200
        expected = [{"item_id": 1, "quantity": 5}, {"item_id": 4, "quantity": 1}]
    assert (await client.get("/cart", headers=owner)).json() == {"items": expected}
    response = await client.get("/cart", headers=bearer(anonymous))
    assert response.status_code == 401 and response.json() == {"detail": "Invalid token"}


async def test_bad_anonymous_token_on_register_and_login_is_ignored(client: Client) -> None:
    assert (await client.register("marko", "marko123", token="not-a-token")).status_code == 201
    assert (await client.login("marko", "marko123", token="not-a-token")).status_code == 200
    user_token = await client.token_for("marko", "marko123")
    assert (await client.login("marko", "marko123", token=user_token)).status_code == 200


async def test_failed_login_keeps_the_visitor(client: Client) -> None:
    anonymous = await client.anonymous()
    await client.put("/cart/items/2", json={"quantity": 1}, headers=bearer(anonymous))
    await client.register("marko", "marko123")
    assert (await client.login("marko", "wrongpass", token=anonymous)).status_code == 401
    assert (await client.get("/cart", headers=bearer(anonymous))).json()["items"] == [{"item_id": 2, "quantity": 1}]


async def test_activity_is_recorded_at_most_once_a_minute(client: Client, monkeypatch) -> None:
    token = await client.anonymous()
    store = client.app.state.store  # type: ignore[attr-defined]
    subject = jwt.decode(token, options={"verify_signature": False})["sub"]
    created = (await store.get_anonymous(subject)).last_active_at
    for _ in range(5):
        await client.get("/cart", headers=bearer(token))
    assert (await store.get_anonymous(subject)).last_active_at == created  # no write for recent activity
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 120)  # two minutes later
    await client.get("/cart", headers=bearer(token))
    assert (await store.get_anonymous(subject)).last_active_at >= created + 120


async def test_idle_visitors_are_purged_at_start(tmp_path: Path) -> None:
    now = time.time()
    old, fresh = "anonymous_" + "0" * 36, "anonymous_" + "1" * 36
    settings = make_settings(tmp_path)
    seed_store(settings, {
        "users": [],
        "anonymous": {old: {"created_at": now - 40 * 86400, "last_active_at": now - 31 * 86400},
                      fresh: {"created_at": now - 40 * 86400, "last_active_at": now - 29 * 86400}},
        "carts": {old: {"1": 1}, fresh: {"2": 1}},
    })
    async for client in running(settings):
        store = client.app.state.store  # type: ignore[attr-defined]
        assert not await store.anonymous_exists(old) and await store.get_cart(old) == {}
        assert await store.anonymous_exists(fresh) and await store.get_cart(fresh) == {2: 1}


async def test_anonymous_login_rate_limit(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, anonymous_login_rate_limit=3)):
        codes = [(await client.post("/anonymous-login")) for _ in range(5)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert 3500 <= int(codes[-1].headers["retry-after"]) <= 3600


async def test_rate_limit_zero_disables(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, anonymous_login_rate_limit=0)):
        assert all([(await client.post("/anonymous-login")).status_code == 200 for _ in range(120)])


async def test_merged_quantities_are_capped(client: Client) -> None:
    owner = bearer(await client.token_for("marko", "marko123"))
    await client.put("/cart/items/1", json={"quantity": 900}, headers=owner)
    anonymous = await client.anonymous()
    await client.put("/cart/items/1", json={"quantity": 900}, headers=bearer(anonymous))
    await client.login("marko", "marko123", token=anonymous)
    assert (await client.get("/cart", headers=owner)).json() == {"items": [{"item_id": 1, "quantity": 1000}]}


async def test_a_cart_write_for_a_visitor_gone_meanwhile_is_401(client: Client) -> None:
    """The token was valid when checked, but the visitor was upgraded before the write ran."""
    anonymous = await client.anonymous()
    subject = jwt.decode(anonymous, options={"verify_signature": False})["sub"]
    put = asyncio.ensure_future(client.put("/cart/items/1", json={"quantity": 1}, headers=bearer(anonymous)))
    register = asyncio.ensure_future(client.register("ana", "password123", token=anonymous))
    responses = await asyncio.gather(put, register)
    assert responses[1].status_code == 201
    assert responses[0].status_code in (200, 401)
    assert await client.app.state.store.get_cart(subject) == {}  # type: ignore[attr-defined]


async def test_items_without_the_trailing_slash(client: Client) -> None:
    assert (await client.get("/items", headers=bearer(await client.anonymous()))).status_code == 200
