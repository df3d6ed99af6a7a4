"""Personalisation over HTTP: item views and history, favourites, preferences, the personalised
catalogue, the data export, and how all of it follows a visitor into an account.

Crash, clean-stop and purge behaviour of real processes: tests/test_processes_personal.py.
"""

import json
import time
from pathlib import Path

import jwt
import pytest

from conftest import Client, assert_export, bearer, make_settings, running
from settings import Settings
from store import MAX_HISTORY, JsonStore, Store

pytestmark = pytest.mark.anyio

COFFEE = [1, 7, 8, 9]
BREWING = [2, 3, 4, 10, 11, 12]
ACCESSORIES = [5, 6, 13, 14, 15, 16]


async def view(client: Client, auth: dict[str, str], *items: int) -> None:
    for item in items:
        response = await client.get(f"/items/{item}", headers=auth)
        assert response.status_code == 200, response.text


async def history_ids(client: Client, auth: dict[str, str]) -> list[int]:
    response = await client.get("/history", headers=auth)
    assert response.status_code == 200
    return [entry["item_id"] for entry in response.json()["items"]]


def ids(items: list[dict]) -> list[int]:
    return [item["id"] for item in items]


# -- the catalogue ----------------------------------------------------------------------------


async def test_catalogue_has_categories_and_no_history_means_no_personalisation(client: Client) -> None:
    body = (await client.get("/items/", headers=bearer(await client.anonymous()))).json()
    assert set(body) == {"message", "items", "recently_viewed", "recommended"}
    assert 12 <= len(body["items"]) <= 20
    assert {item["category"] for item in body["items"]} == {"coffee", "brewing", "accessories"}
    assert ids(body["items"]) == sorted(ids(body["items"]))  # catalogue order by default
    assert body["recently_viewed"] == body["recommended"] == []


async def test_item_detail_records_a_view(client: Client) -> None:
    auth = bearer(await client.anonymous())
    response = await client.get("/items/5", headers=auth)
    assert response.status_code == 200
    assert response.json() == {"id": 5, "name": "Burr grinder", "price": 129.0, "category": "accessories"}
    history = (await client.get("/history", headers=auth)).json()["items"]
    assert [h["item_id"] for h in history] == [5] and history[0]["viewed_at"] > time.time() - 60


async def test_item_detail_errors(client: Client) -> None:
    assert (await client.get("/items/1")).status_code == 401
    auth = bearer(await client.anonymous())
    response = await client.get("/items/999", headers=auth)
    assert response.status_code == 404 and response.json() == {"detail": "Item 999 does not exist"}
    assert (await client.get("/items/abc", headers=auth)).status_code == 422
    assert await history_ids(client, auth) == []


async def test_history_newest_first_each_item_once(client: Client) -> None:
    auth = bearer(await client.anonymous())
    await view(client, auth, 1, 2, 3, 1)
    assert await history_ids(client, auth) == [1, 3, 2]
    times = [h["viewed_at"] for h in (await client.get("/history", headers=auth)).json()["items"]]
    assert times == sorted(times, reverse=True)


async def test_recently_viewed_is_the_last_ten(client: Client) -> None:
    auth = bearer(await client.anonymous())
    await view(client, auth, *range(1, 13))
    body = (await client.get("/items/", headers=auth)).json()
    assert ids(body["recently_viewed"]) == list(range(12, 2, -1))


async def test_delete_history(client: Client) -> None:
    assert (await client.delete("/history")).status_code == 401
    auth = bearer(await client.anonymous())
    await view(client, auth, 1, 2)
    assert (await client.delete("/history", headers=auth)).status_code == 204
    assert await history_ids(client, auth) == []
    assert (await client.get("/items/", headers=auth)).json()["recently_viewed"] == []
    await view(client, auth, 3)
    assert await history_ids(client, auth) == [3]


async def test_recommended_by_category_interest(client: Client) -> None:
    auth = bearer(await client.anonymous())
    await view(client, auth, 2, 3, 1)  # brewing twice, coffee once
    body = (await client.get("/items/", headers=auth)).json()
    # brewing items first (not the viewed ones), then coffee; ties in catalogue order; at most 4
    assert ids(body["recommended"]) == [4, 10, 11, 12]
    assert ids(body["recently_viewed"]) == [1, 3, 2]


async def test_recommended_leaves_out_favourites_and_cart(client: Client) -> None:
    auth = bearer(await client.anonymous())
    await view(client, auth, 1)  # coffee
    assert (await client.put("/favourites/7", headers=auth)).status_code == 200  # coffee: counts too
    assert (await client.put("/cart/items/8", json={"quantity": 1}, headers=auth)).status_code == 200
    assert ids((await client.get("/items/", headers=auth)).json()["recommended"]) == [9]


async def test_favourite_alone_gives_recommendations(client: Client) -> None:
    auth = bearer(await client.anonymous())
    await client.put("/favourites/13", headers=auth)
    assert ids((await client.get("/items/", headers=auth)).json()["recommended"]) == [5, 6, 14, 15]


async def test_sort_orders(client: Client) -> None:
    auth = bearer(await client.anonymous())
    by_name = (await client.get("/items/?sort=name", headers=auth)).json()["items"]
    assert [i["name"].casefold() for i in by_name] == sorted(i["name"].casefold() for i in by_name)
    by_price = (await client.get("/items/?sort=price", headers=auth)).json()["items"]
    assert [i["price"] for i in by_price] == sorted(i["price"] for i in by_price)
    await view(client, auth, 5, 6)
    recommended = (await client.get("/items/?sort=recommended", headers=auth)).json()["items"]
    assert ids(recommended)[:6] == ACCESSORIES and len(recommended) == len(by_name)
    catalogue = (await client.get("/items/?sort=catalogue", headers=auth)).json()["items"]
    assert ids(catalogue) == sorted(ids(catalogue))
    response = await client.get("/items/?sort=cheapest", headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "sort"]


async def test_saved_sort_is_the_default_and_a_query_overrides_it(client: Client) -> None:
    auth = bearer(await client.anonymous())
    await client.patch("/preferences", json={"sort": "price"}, headers=auth)
    prices = [i["price"] for i in (await client.get("/items/", headers=auth)).json()["items"]]
    assert prices == sorted(prices)
    by_name = (await client.get("/items/?sort=name", headers=auth)).json()["items"]
    assert [i["name"].casefold() for i in by_name] == sorted(i["name"].casefold() for i in by_name)


# -- favourites -------------------------------------------------------------------------------


async def test_favourites_put_is_idempotent_and_delete_needs_one(client: Client) -> None:
    assert (await client.get("/favourites")).status_code == 401
    auth = bearer(await client.anonymous())
    assert (await client.get("/favourites", headers=auth)).json() == {"items": []}
    assert (await client.put("/favourites/6", headers=auth)).json() == {"items": [6]}
    assert (await client.put("/favourites/2", headers=auth)).json() == {"items": [2, 6]}
    assert (await client.put("/favourites/6", headers=auth)).json() == {"items": [2, 6]}
    assert (await client.get("/favourites", headers=auth)).json() == {"items": [2, 6]}
    missing = await client.put("/favourites/999", headers=auth)
    assert missing.status_code == 404 and missing.json() == {"detail": "Item 999 does not exist"}
    assert (await client.delete("/favourites/6", headers=auth)).json() == {"items": [2]}
    not_one = await client.delete("/favourites/6", headers=auth)
    assert not_one.status_code == 404 and not_one.json() == {"detail": "Item 6 is not a favourite"}
    assert (await client.put("/favourites/x", headers=auth)).status_code == 422


# -- preferences ------------------------------------------------------------------------------


async def test_preferences_defaults_and_partial_updates(client: Client) -> None:
    assert (await client.get("/preferences")).status_code == 401
    auth = bearer(await client.anonymous())
    assert (await client.get("/preferences", headers=auth)).json() == {"sort": "catalogue", "theme": "system"}
    response = await client.patch("/preferences", json={"theme": "dark"}, headers=auth)
    assert response.status_code == 200 and response.json() == {"sort": "catalogue", "theme": "dark"}
    assert (await client.patch("/preferences", json={"sort": "name"}, headers=auth)).json() == {
        "sort": "name", "theme": "dark"}
    assert (await client.patch("/preferences", json={}, headers=auth)).json() == {"sort": "name", "theme": "dark"}
    assert (await client.get("/preferences", headers=auth)).json() == {"sort": "name", "theme": "dark"}


@pytest.mark.parametrize("body", [{"colour": "red"}, {"theme": "purple"}, {"sort": "random"}, {"theme": None},
                                  {"theme": 1}, ["theme"]])
async def test_preferences_refuse_unknown_keys_and_values(client: Client, body: object) -> None:
    auth = bearer(await client.anonymous())
    response = await client.patch("/preferences", json=body, headers=auth)
    assert response.status_code == 422 and isinstance(response.json()["detail"], list)
    assert (await client.get("/preferences", headers=auth)).json() == {"sort": "catalogue", "theme": "system"}


# -- the data export and account deletion ------------------------------------------------------


async def test_data_export_needs_an_account(client: Client) -> None:
    assert (await client.get("/users/me/data")).status_code == 401
    response = await client.get("/users/me/data", headers=bearer(await client.anonymous()))
    assert response.status_code == 403


async def test_data_export_has_everything_and_no_hash(client: Client) -> None:
    first = await client.session_for("marko")
    second = await client.login("marko")
    auth = bearer(first["token"])
    await view(client, auth, 3, 4)
    await client.put("/favourites/5", headers=auth)
    await client.patch("/preferences", json={"theme": "light"}, headers=auth)
    await client.put("/cart/items/2", json={"quantity": 2}, headers=auth)
    response = await client.get("/users/me/data", headers=auth)
    assert response.status_code == 200
    data = response.json()
    assert_export(data, "marko")
    me = (await client.get("/users/me", headers=auth)).json()
    assert data["profile"] == me
    assert data["cart"] == [{"item_id": 2, "quantity": 2}]
    assert [h["item_id"] for h in data["history"]] == [4, 3]
    assert data["favourites"] == [5]
    assert data["preferences"] == {"sort": "catalogue", "theme": "light"}
    sessions = data["sessions"]
    assert len(sessions) == 2 and [s["current"] for s in sessions] == [True, False]
    assert all(time.time() - 60 < s["created_at"] <= s["expires_at"] for s in sessions)
    assert second.status_code == 200
    text = response.text
    assert "$2b$" not in text and "password" not in text and "jti" not in text
    await client.post("/users/logout", headers=bearer(second.json()["token"]))
    assert len((await client.get("/users/me/data", headers=auth)).json()["sessions"]) == 1


async def test_deleting_the_account_removes_all_its_data(client: Client) -> None:
    auth = bearer(await client.token_for("marko"))
    await view(client, auth, 1)
    await client.put("/favourites/1", headers=auth)
    await client.patch("/preferences", json={"theme": "dark"}, headers=auth)
    await client.put("/cart/items/2", json={"quantity": 1}, headers=auth)
    old_id = (await client.get("/users/me", headers=auth)).json()["id"]
    assert (await client.request("DELETE", "/users/me", json={"password": "password123"},
                                 headers=auth)).status_code == 204
    auth = bearer(await client.token_for("marko"))  # the same name again: a new, empty account
    data = (await client.get("/users/me/data", headers=auth)).json()
    assert data["history"] == [] and data["favourites"] == [] and data["cart"] == []
    assert data["preferences"] == {"sort": "catalogue", "theme": "system"}
    store: Store = client.app.state.store  # type: ignore[attr-defined]
    await store.flush_views()
    assert await store.get_history(old_id) == [] and await store.get_favourites(old_id) == []
    assert await store.get_preferences(old_id) == {} and await store.get_cart(old_id) == {}


@pytest.mark.json_only  # edits or reads the JSON file itself
async def test_session_without_created_at_still_loads(tmp_path: Path, settings: Settings) -> None:
    async for client in running(settings):
        token = await client.token_for("marko")
    doc = json.loads(settings.users_file.read_text())
    for session in doc["sessions"].values():
        del session["created_at"]  # a session written before sessions had a creation time
    settings.users_file.write_text(json.dumps(doc))
    async for client in running(settings):
        response = await client.get("/users/me/data", headers=bearer(token))
        assert response.status_code == 200
        assert [s["created_at"] for s in response.json()["sessions"]] == [None]


# -- into the account -------------------------------------------------------------------------


async def visitor_with_data(client: Client) -> str:
    token = await client.anonymous()
    auth = bearer(token)
    await view(client, auth, 1, 8)
    await client.put("/favourites/9", headers=auth)
    await client.patch("/preferences", json={"theme": "dark", "sort": "price"}, headers=auth)
    return token


async def test_register_carries_everything_into_the_account(client: Client) -> None:
    token = await visitor_with_data(client)
    assert (await client.register("marko", token=token)).status_code == 201
    assert (await client.get("/history", headers=bearer(token))).status_code == 401
    auth = bearer(await client.token_for("marko"))
    assert await history_ids(client, auth) == [8, 1]
    assert (await client.get("/favourites", headers=auth)).json() == {"items": [9]}
    assert (await client.get("/preferences", headers=auth)).json() == {"sort": "price", "theme": "dark"}


async def test_login_merges_both_sides(client: Client) -> None:
    auth = bearer(await client.token_for("marko"))
    await view(client, auth, 2, 8)
    await client.put("/favourites/5", headers=auth)
    await client.patch("/preferences", json={"theme": "light"}, headers=auth)  # the account's own choice
    token = await visitor_with_data(client)  # views 1 then 8 (newer than the account's view of 8)
    response = await client.login("marko", token=token)
    assert response.status_code == 200
    auth = bearer(response.json()["token"])
    assert await history_ids(client, auth) == [8, 1, 2]
    assert (await client.get("/favourites", headers=auth)).json() == {"items": [5, 9]}
    assert (await client.get("/preferences", headers=auth)).json() == {"sort": "price", "theme": "light"}
    for path in ("/history", "/favourites", "/preferences"):
        assert (await client.get(path, headers=bearer(token))).status_code == 401


async def test_written_views_survive_a_restart(settings: Settings) -> None:
    async for client in running(settings):
        auth = bearer(await client.token_for("marko"))
        await view(client, auth, 4, 2)
        assert await client.app.state.store.flush_views() == 1  # type: ignore[attr-defined]
        await view(client, auth, 3)  # not flushed: the clean stop writes it
    async for client in running(settings):
        assert await history_ids(client, auth) == [3, 2, 4]


async def test_purged_visitor_loses_everything(client: Client) -> None:
    token = await visitor_with_data(client)
    store: Store = client.app.state.store  # type: ignore[attr-defined]
    await store.flush_views()
    time.sleep(0.01)
    assert await store.purge_anonymous(0) == 1
    assert (await client.get("/history", headers=bearer(token))).status_code == 401
    owner = jwt.decode(token, options={"verify_signature": False})["sub"]
    assert await store.get_history(owner) == [] and await store.get_favourites(owner) == []
    assert await store.get_preferences(owner) == {}


# -- the store's bounds -----------------------------------------------------------------------


async def test_history_is_capped_and_cleared_views_stay_cleared(tmp_path: Path) -> None:
    store = JsonStore(tmp_path / "users.json")
    await store.open()
    try:
        user = await store.add_user("marko", "not-a-hash")
        for item in range(1, MAX_HISTORY + 11):
            await store.record_view(user.id, item)
        assert len(await store.get_history(user.id)) == MAX_HISTORY
        await store.flush_views()
        history = await store.get_history(user.id)
        assert [item for item, _ in history] == list(range(MAX_HISTORY + 10, 10, -1))
        await store.record_view(user.id, 1)
        await store.clear_history(user.id)
        await store.flush_views()
        assert await store.get_history(user.id) == []
    finally:
        await store.close()


async def test_views_of_a_removed_owner_are_dropped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async for client in running(settings):
        token = await client.token_for("marko")
        await view(client, bearer(token), 1)
        assert (await client.request("DELETE", "/users/me", json={"password": "password123"},
                                     headers=bearer(token))).status_code == 204
        assert await client.app.state.store.flush_views() == 0  # type: ignore[attr-defined]


async def test_views_noted_by_another_worker_follow_the_visitor_into_the_account(tmp_path: Path) -> None:
    """Two stores on one file, as two workers: a view noted (not yet written) by one, a register
    with the visitor's token on the other; the first one's flush puts the view in the account."""
    first, second = JsonStore(tmp_path / "users.json"), JsonStore(tmp_path / "users.json")
    await first.open()
    await second.open()
    try:
        visitor = await first.add_anonymous("client", 0)
        await first.record_view(visitor, 3)
        await second.record_view(visitor, 2)
        user = await second.add_user("marko", "not-a-hash", merge_from=visitor)
        assert [item for item, _ in await second.get_history(user.id)] == [2]
        assert await first.flush_views() == 1
        assert [item for item, _ in await second.get_history(user.id)] == [2, 3]  # by time
        assert await second.delete_user(user.id)
        await first.record_view(visitor, 4)
        assert await first.flush_views() == 0  # the account is gone: so are the visitor's late views
    finally:
        for store in (first, second):
            await store.close()


async def test_openapi_declares_every_status(client: Client) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    expected = {
        ("/items/", "get"): {"200", "401", "422"},
        ("/items/{item_id}", "get"): {"200", "401", "404", "422"},
        ("/history", "get"): {"200", "401"},
        ("/history", "delete"): {"204", "401"},
        ("/favourites", "get"): {"200", "401"},
        ("/favourites/{item_id}", "put"): {"200", "401", "404", "422"},
        ("/favourites/{item_id}", "delete"): {"200", "401", "404", "422"},
        ("/preferences", "get"): {"200", "401"},
        ("/preferences", "patch"): {"200", "401", "422"},
        ("/users/me/data", "get"): {"200", "401", "403"},
    }
    for (path, method), statuses in expected.items():
        # 431: every route; 503: the database is down (PostgreSQL backend), for every route with a
        # token; 413: a body over 64 KiB, for every method but GET
        extra = {"431", "503"} | ({"413"} if method != "get" else set())
        assert set(paths[path][method]["responses"]) == statuses | extra, (path, method)
        optional = [{}] if path == "/items/" else []  # the catalogue answers without a token too
        assert paths[path][method]["security"] == [{"HTTPBearer": []}, *optional], (path, method)
