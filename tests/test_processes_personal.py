"""Personalisation in real uvicorn processes: what a ``kill -9`` keeps, what a clean stop writes,
what a purge removes from the files, and the merge into an account across two workers."""

import json
import time
from pathlib import Path

import httpx
import jwt
from test_processes import PASSWORD, credentials, fresh_connections, journal_of

from conftest import bearer
from server import Server


def store_text(store: Path) -> str:
    """Everything the store's files hold, snapshot and journal."""
    journal = journal_of(store)
    return store.read_text() + (journal.read_text() if journal.exists() else "")


def anonymous(client: httpx.Client) -> tuple[str, str]:
    """A visitor's token and its ``anonymous_<uuid>``."""
    response = client.post("/anonymous-login")
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    return token, jwt.decode(token, options={"verify_signature": False})["sub"]


def wait_for_history(client: httpx.Client, token: str, expected: list[int], timeout: float = 10) -> None:
    """Views are written within about a second: poll until the history is ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        items = [h["item_id"] for h in client.get("/history", headers=bearer(token)).json()["items"]]
        if items == expected or time.monotonic() > deadline:
            assert items == expected
            return
        time.sleep(0.05)


def test_favourites_and_preferences_survive_kill_9(tmp_path: Path) -> None:
    store = tmp_path / "users.json"
    with Server(store, workers=2) as server, fresh_connections(server) as client:
        token, _ = anonymous(client)
        assert client.put("/favourites/3", headers=bearer(token)).status_code == 200
        assert client.patch("/preferences", json={"theme": "dark"}, headers=bearer(token)).status_code == 200
        server.kill()
    with Server(store, env=server.env) as server, fresh_connections(server) as client:
        assert client.get("/favourites", headers=bearer(token)).json() == {"items": [3]}
        assert client.get("/preferences", headers=bearer(token)).json() == {"sort": "catalogue", "theme": "dark"}


def test_views_of_a_clean_stop_are_kept(tmp_path: Path) -> None:
    store = tmp_path / "users.json"
    with Server(store) as server, fresh_connections(server) as client:
        token, owner = anonymous(client)
        for item in (4, 2, 7):
            assert client.get(f"/items/{item}", headers=bearer(token)).status_code == 200
        server.stop()  # at once: the views may still be in memory only
    assert not journal_of(store).exists()
    history = json.loads(store.read_text())["history"][owner]["items"]
    assert [item for item, _ in history] == [7, 2, 4]
    with Server(store, env=server.env) as server, fresh_connections(server) as client:
        wait_for_history(client, token, [7, 2, 4], timeout=0)


def test_purged_visitor_leaves_nothing_in_the_files(tmp_path: Path) -> None:
    store = tmp_path / "users.json"
    with Server(store) as server, fresh_connections(server) as client:
        token, owner = anonymous(client)
        kept, kept_owner = anonymous(client)
        for auth in (bearer(token), bearer(kept)):
            assert client.get("/items/5", headers=auth).status_code == 200
            assert client.put("/favourites/6", headers=auth).status_code == 200
            assert client.patch("/preferences", json={"sort": "price"}, headers=auth).status_code == 200
        assert client.put("/cart/items/1", json={"quantity": 1}, headers=bearer(token)).status_code == 200
        server.stop()
    doc = json.loads(store.read_text())
    assert all(owner in doc[table] for table in ("anonymous", "carts", "history", "favourites", "preferences"))
    # A start purges visitors idle for longer than ANONYMOUS_TOKEN_EXPIRE_DAYS. Make the first
    # visitor idle: its last activity goes back two days (the other one stays recent).
    doc["anonymous"][owner]["last_active_at"] -= 2 * 86400
    store.write_text(json.dumps(doc))
    env = {**server.env, "ANONYMOUS_TOKEN_EXPIRE_DAYS": "1"}
    with Server(store, env=env) as server, fresh_connections(server) as client:
        assert "purged 1 idle anonymous visitor" in server.stderr
        assert client.get("/history", headers=bearer(token)).status_code == 401
        server.stop()
    text = store_text(store)
    assert owner not in text
    doc = json.loads(text)
    assert owner not in doc["anonymous"] and owner not in doc["carts"]
    for table in ("history", "favourites", "preferences"):
        assert owner not in doc[table] and kept_owner in doc[table], table


def test_merge_on_register_and_login_across_two_workers(tmp_path: Path) -> None:
    store = tmp_path / "users.json"
    with Server(store, workers=2) as server, fresh_connections(server) as client:
        # register with a visitor's token: its views (noted by either worker), favourite, theme
        token, _ = anonymous(client)
        for item in (1, 2, 3):
            assert client.get(f"/items/{item}", headers=bearer(token)).status_code == 200
        assert client.put("/favourites/2", headers=bearer(token)).status_code == 200
        assert client.patch("/preferences", json={"theme": "dark"}, headers=bearer(token)).status_code == 200
        assert client.post("/users/register", json=credentials("marko"),
                           headers=bearer(token)).status_code == 201
        login = client.post("/users/login", json=credentials("marko", PASSWORD)).json()["token"]
        wait_for_history(client, login, [3, 2, 1])
        assert client.get("/favourites", headers=bearer(login)).json() == {"items": [2]}

        # log in with a second visitor: both sides have history, favourites and preferences
        assert client.patch("/preferences", json={"sort": "name"}, headers=bearer(login)).status_code == 200
        visitor, _ = anonymous(client)
        for item in (9, 1):
            assert client.get(f"/items/{item}", headers=bearer(visitor)).status_code == 200
        assert client.put("/favourites/9", headers=bearer(visitor)).status_code == 200
        assert client.patch("/preferences", json={"sort": "price", "theme": "light"},
                            headers=bearer(visitor)).status_code == 200
        response = client.post("/users/login", json=credentials("marko"), headers=bearer(visitor))
        assert response.status_code == 200
        login = response.json()["token"]
        wait_for_history(client, login, [1, 9, 3, 2])
        assert client.get("/favourites", headers=bearer(login)).json() == {"items": [2, 9]}
        assert client.get("/preferences", headers=bearer(login)).json() == {"sort": "name", "theme": "dark"}
        assert client.get("/history", headers=bearer(visitor)).status_code == 401
