"""Moving in: ``python -m store.pg_tools import-json PATH`` copies a JSON store into PostgreSQL.

The JSON store is made by the service itself (registrations, logins, a cart, an anonymous
visitor's cart), plus a user in the book's format (``{"users": [{"id", "username", "password"}]}``).
Imported twice, the database is the same (its whole data, dumped by ``pg_dump`` and compared as a
set of rows); the service on PostgreSQL then knows those users by their old ids and passwords, and
their old tokens and carts still work.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt
import pg_support
import pytest

from conftest import Databases, assert_account, bearer, make_settings, running

pytestmark = pytest.mark.anyio


def import_json(path: Path, url: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "store.pg_tools", "import-json", str(path)], cwd=pg_support.ROOT,
                            env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f":{urlsplit(url).password}@" not in result.stdout + result.stderr  # the URL is named without it
    return result


def data_rows(url: str) -> list[str]:
    """Every row of every table (``pg_dump --data-only``), sorted: the data, whatever the row order."""
    parts = urlsplit(url)
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    dump = subprocess.run(["pg_dump", "--data-only", "--no-owner", "--no-comments", "-h", parts.hostname or "",
                           "-p", str(parts.port or 5432), "-U", parts.username or "", parts.path.lstrip("/")],
                          env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted(line for line in dump.splitlines() if line and not line.startswith(("--", "SET ", "SELECT ", "\\")))


async def test_a_json_store_imported_twice_gives_the_same_database_and_its_users_log_in(
        tmp_path: Path, databases: Databases) -> None:
    json_dir = tmp_path / "json"
    async for client in running(make_settings(json_dir, database_url=None)):
        assert (await client.register("alice", "alice-pass-1")).status_code == 201
        alice = await client.session_for("alice", "alice-pass-1")
        assert (await client.put("/cart/items/3", json={"quantity": 2}, headers=bearer(alice["token"]))).status_code == 200
        bob = await client.session_for("bob", "bob-pass-12")
        visitor = await client.anonymous()
        assert (await client.put("/cart/items/5", json={"quantity": 1}, headers=bearer(visitor))).status_code == 200
        alice_id = (await client.get("/users/me", headers=bearer(alice["token"]))).json()["id"]
    store = json_dir / "users.json"
    doc = json.loads(store.read_text())  # the service folds its journal in at a clean stop
    book_hash = bcrypt.hashpw(b"carol-pass-1", bcrypt.gensalt(4)).decode()
    doc["users"].append({"id": "book-user-1", "username": "carol", "password": book_hash})
    store.write_text(json.dumps(doc))
    book = tmp_path / "book.json"
    book.write_text(json.dumps({"users": [{"id": "book-user-2", "username": "dave", "password": book_hash}]}))

    url = databases.url_for(tmp_path / "pg")
    first = import_json(store, url)
    import_json(book, url)
    once = data_rows(url)
    assert any("alice" in row for row in once) and any("dave" in row for row in once)
    again = import_json(store, url)
    import_json(book, url)
    assert data_rows(url) == once
    assert first.stdout.strip() and again.stdout.strip()  # it reports counts

    async for client in running(make_settings(tmp_path / "pg", database_url=url)):
        for name, password in (("alice", "alice-pass-1"), ("bob", "bob-pass-12"), ("carol", "carol-pass-1"),
                               ("dave", "carol-pass-1")):
            assert (await client.login(name, password)).status_code == 200, name
            assert (await client.login(name, "not-the-password")).status_code == 401, name
        me = await client.get("/users/me", headers=bearer(alice["token"]))  # a token issued by the JSON store
        assert me.status_code == 200
        assert_account(me.json(), "alice", alice_id, own=True)
        assert me.json()["created_at"] is not None and me.json()["is_admin"] is False  # every attribute copied
        registered = await client.app.state.store.list_audit(100, type="register")  # type: ignore[attr-defined]
        assert "alice" in {e.username for e in registered}  # the JSON store's audit log came along
        cart = await client.get("/cart", headers=bearer(alice["token"]))
        assert cart.json() == {"items": [{"item_id": 3, "quantity": 2}]}
        assert (await client.get("/cart", headers=bearer(visitor))).json() == {"items": [{"item_id": 5, "quantity": 1}]}
        refreshed = await client.post("/users/refresh", json={"refresh_token": bob["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text  # the session came along
        listed = await client.get("/users/list", headers=bearer(refreshed.json()["token"]))
        assert sorted(u["username"] for u in listed.json()["users"]) == ["alice", "bob", "carol", "dave"]
        assert_account(next(u for u in listed.json()["users"] if u["username"] == "dave"), "dave", "book-user-2")
