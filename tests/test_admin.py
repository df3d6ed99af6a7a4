"""The administrators' routes (issue #20), over HTTP on both backends: who may call them, finding
accounts, disabling and enabling, unlocking, ending sessions, granting and revoking the right;
and, with real processes, a disable reaching every worker (JSON, ``--workers 2``) and a second
host (PostgreSQL).
"""

import functools
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_abuse import from_address

from conftest import Client, Databases, bearer, make_settings, running
from server import ROOT, Server

pytestmark = pytest.mark.anyio
DISABLED = {"detail": "Account disabled"}
FORBIDDEN = {"detail": "Admin rights required"}


async def make_admin(client: Client, username: str) -> str:
    """Register ``username``, grant it the right through the store (as manage.py does), log in."""
    await client.register(username)
    user = await client.app.state.store.find_user(username)  # type: ignore[attr-defined]
    await client.app.state.store.update_user(user.id, is_admin=True)  # type: ignore[attr-defined]
    return (await client.login(username)).json()["token"]


async def user_id(client: Client, token: str) -> str:
    return (await client.get("/users/me", headers=bearer(token))).json()["id"]


async def test_admin_routes_need_an_administrator(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        user = await client.token_for("marko")
        visitor = await client.anonymous()
        marko = await user_id(client, user)
        calls = [("GET", "/admin/users"), ("GET", "/admin/audit"), ("POST", f"/admin/users/{marko}/disable"),
                 ("POST", f"/admin/users/{marko}/enable"), ("POST", f"/admin/users/{marko}/unlock"),
                 ("DELETE", f"/admin/users/{marko}/sessions"), ("POST", f"/admin/users/{marko}/admin"),
                 ("DELETE", f"/admin/users/{marko}/admin")]
        for method, path in calls:
            assert (await client.request(method, path)).status_code == 401
            assert (await client.request(method, path, headers=bearer("not.a.token"))).status_code == 401
            for token in (user, visitor):
                answer = await client.request(method, path, headers=bearer(token))
                assert (answer.status_code, answer.json()) == (403, FORBIDDEN), (method, path)
        me = (await client.get("/users/me", headers=bearer(admin))).json()
        assert me["is_admin"] is True and me["disabled"] is False
        assert (await client.get("/admin/users", headers=bearer(admin))).status_code == 200


async def listed(client: Client, admin: str, **params: object) -> list[str]:
    answer = await client.get("/admin/users", params=params, headers=bearer(admin))
    assert answer.status_code == 200, answer.text
    return [u["username"] for u in answer.json()["users"]]


async def test_users_are_listed_by_name_with_a_prefix_query(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        for name in ("Alpha1", "alpha2", "alpine", "beta", "a_b1", "axb1", "al.x"):
            assert (await client.register(name)).status_code == 201
        await client.login("alpha2")
        names = functools.partial(listed, client, admin)
        assert await names() == ["a_b1", "al.x", "Alpha1", "alpha2", "alpine", "axb1", "beta", "root"]
        assert await names(query="ALP") == ["Alpha1", "alpha2", "alpine"]
        assert await names(query="a_") == ["a_b1"]  # `_` is a letter here, not LIKE's wildcard
        assert await names(query="al.") == ["al.x"]
        assert await names(query="zzz") == []
        pages, cursor = [], None
        while True:
            answer = (await client.get("/admin/users", params={"query": "al", "limit": 2,
                                                               **({"cursor": cursor} if cursor else {})},
                                       headers=bearer(admin))).json()
            pages.append([u["username"] for u in answer["users"]])
            cursor = answer["next_cursor"]
            if cursor is None:
                break
        assert pages == [["al.x", "Alpha1"], ["alpha2", "alpine"]]
        accounts = {u["username"]: u for u in
                  (await client.get("/admin/users", headers=bearer(admin))).json()["users"]}
        assert set(accounts["alpha2"]) == {"id", "username", "is_admin", "disabled", "created_at", "last_login_at"}
        assert accounts["alpha2"]["last_login_at"] is not None and accounts["beta"]["last_login_at"] is None
        assert accounts["beta"]["created_at"] <= time.time() and accounts["root"]["is_admin"] is True
        for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "!!"}, {"query": ""}, {"query": "x" * 65}):
            assert (await client.get("/admin/users", params=bad, headers=bearer(admin))).status_code == 422, bad


async def test_a_disabled_account_is_out_until_enabled(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        session = await client.session_for("marko")
        other_device = (await client.login("marko")).json()
        marko = await user_id(client, session["token"])
        answer = await client.post(f"/admin/users/{marko}/disable", headers=bearer(admin))
        assert answer.status_code == 200 and answer.json()["disabled"] is True and answer.json()["id"] == marko
        for tokens in (session, other_device):
            assert (await client.get("/users/me", headers=bearer(tokens["token"]))).status_code == 401
            assert (await client.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401
        for _ in range(6):  # past LOGIN_MAX_FAILURES: the right password is not a guess, never locked out
            right = await client.login("marko")
            assert (right.status_code, right.json()) == (403, DISABLED)
        with_device = await client.login("marko", device_token=session["device_token"])  # revoked: no trust
        assert (with_device.status_code, with_device.json()) == (403, DISABLED)
        wrong = await client.login("marko", "wrong-password")
        assert (wrong.status_code, wrong.json()) == (401, {"detail": "Invalid username and/or password"})
        answer = await client.post(f"/admin/users/{marko}/enable", headers=bearer(admin))
        assert answer.status_code == 200 and answer.json()["disabled"] is False
        again = await client.login("marko")
        assert again.status_code == 200
        assert (await client.get("/users/me", headers=bearer(again.json()["token"]))).status_code == 200


async def test_a_disabled_account_s_surviving_session_is_refused(tmp_path: Path) -> None:
    """Should a session outlive the disable (a login racing it), its token is still refused."""
    async for client in running(make_settings(tmp_path)):
        token = await client.token_for("marko")
        store = client.app.state.store  # type: ignore[attr-defined]
        await store.update_user((await store.find_user("marko")).id, disabled=True)  # the flag alone
        assert (await client.get("/users/me", headers=bearer(token))).status_code == 401


async def test_no_administrator_disables_or_demotes_themselves(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        me = await user_id(client, admin)
        for method, path in (("POST", f"/admin/users/{me}/disable"), ("DELETE", f"/admin/users/{me}/admin")):
            answer = await client.request(method, path, headers=bearer(admin))
            assert answer.status_code == 409, answer.text
        assert (await client.get("/admin/users", headers=bearer(admin))).status_code == 200


async def test_unknown_ids_are_404(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        for method, action in (("POST", "disable"), ("POST", "enable"), ("POST", "unlock"), ("DELETE", "sessions"),
                               ("POST", "admin"), ("DELETE", "admin")):
            answer = await client.request(method, f"/admin/users/no-such-id/{action}", headers=bearer(admin))
            assert (answer.status_code, answer.json()) == (404, {"detail": "User not found"}), action
        answer = await client.post(f"/admin/users/{'x' * 65}/disable", headers=bearer(admin))
        assert answer.status_code == 422


async def test_unlock_clears_every_address_and_the_account(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=2, login_max_failures_per_account=4)
    async for client in running(settings):
        admin = await make_admin(client, "root")
        await client.register("marko")
        marko = (await client.app.state.store.find_user("marko")).id  # type: ignore[attr-defined]
        for host in ("10.0.0.1", "10.0.0.2"):
            async with from_address(client, host) as other:
                for _ in range(2):
                    assert (await other.login("marko", "wrong-password")).status_code == 401
                assert (await other.login("marko")).status_code == 429  # this address: locked for the name
        third = await client.login("marko")
        assert third.status_code == 429 and third.json().get("challenge_required") is True  # the account's limit
        assert (await client.post(f"/admin/users/{marko}/unlock", headers=bearer(admin))).status_code == 204
        for host in ("10.0.0.1", "10.0.0.2"):
            async with from_address(client, host) as other:
                assert (await other.login("marko")).status_code == 200, host


async def test_ending_an_account_s_sessions(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        one, two = await client.session_for("marko"), (await client.login("marko")).json()
        marko = await user_id(client, one["token"])
        assert (await client.delete(f"/admin/users/{marko}/sessions", headers=bearer(admin))).status_code == 204
        for tokens in (one, two):
            assert (await client.get("/users/me", headers=bearer(tokens["token"]))).status_code == 401
            assert (await client.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401
        assert (await client.login("marko")).status_code == 200  # not disabled: a new login works
        assert (await client.get("/users/me", headers=bearer(admin))).status_code == 200


async def test_granting_and_revoking_the_right(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        token = await client.token_for("marko")
        marko = await user_id(client, token)
        assert (await client.get("/admin/users", headers=bearer(token))).status_code == 403
        granted = await client.post(f"/admin/users/{marko}/admin", headers=bearer(admin))
        assert granted.status_code == 200 and granted.json()["is_admin"] is True
        assert (await client.get("/admin/users", headers=bearer(token))).status_code == 200  # the same token
        root = await user_id(client, admin)
        assert (await client.delete(f"/admin/users/{root}/admin", headers=bearer(token))).json()["is_admin"] is False
        assert (await client.get("/admin/users", headers=bearer(admin))).status_code == 403
        assert (await client.post(f"/admin/users/{marko}/disable", headers=bearer(admin))).status_code == 403


async def test_every_action_is_an_audit_event_naming_the_administrator(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        root = await user_id(client, admin)
        await client.register("marko")
        marko = (await client.app.state.store.find_user("marko")).id  # type: ignore[attr-defined]
        actions = [("POST", "disable", "admin_disable"), ("POST", "enable", "admin_enable"),
                   ("POST", "unlock", "admin_unlock"), ("DELETE", "sessions", "admin_end_sessions"),
                   ("POST", "admin", "admin_grant"), ("DELETE", "admin", "admin_revoke")]
        for method, action, _ in actions:
            assert (await client.request(method, f"/admin/users/{marko}/{action}", headers=bearer(admin))).is_success
        page = await client.get("/admin/audit", params={"user_id": marko}, headers=bearer(admin))
        assert page.status_code == 200, page.text
        events = page.json()["events"]
        assert [e["type"] for e in events] == [t for _, _, t in reversed(actions)] + ["register"]
        for event in events[:-1]:
            assert event["detail"]["admin_id"] == root and event["detail"]["admin"] == "root"
            assert event["user_id"] == marko and event["username"] == "marko" and event["detail"]["request_id"]
        only = await client.get("/admin/audit", params={"type": "admin_unlock"}, headers=bearer(admin))
        assert [e["type"] for e in only.json()["events"]] == ["admin_unlock"]


async def test_the_audit_log_pages_newest_first(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        for i in range(7):
            await client.register(f"user{i}")
        seen, cursor = [], None
        while True:
            params = {"limit": 3, "type": "register", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/admin/audit", params=params, headers=bearer(admin))).json()
            seen += page["events"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [e["username"] for e in seen] == [f"user{i}" for i in reversed(range(7))] + ["root"]
        assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), reverse=True)
        for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "nope"}, {"type": "Login!"}, {"user_id": ""}):
            assert (await client.get("/admin/audit", params=bad, headers=bearer(admin))).status_code == 422, bad


# -- real processes -------------------------------------------------------------------------------


def manage(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` with a server's own configuration, as an operator runs it."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin, text=True,
                          capture_output=True, timeout=60, check=False)


def fresh(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=20, limits=httpx.Limits(max_keepalive_connections=0))


def every_worker_says(server: Server, path: str, token: str, expected: int, calls: int = 40) -> None:
    """``GET path`` on fresh connections until each worker has answered (each answer ``expected``)."""
    before = server.served_by(f"GET {path}")
    with fresh(server) as client:
        for _ in range(calls):
            answer = client.get(path, headers=bearer(token))
            assert answer.status_code == expected, answer.text
    deadline = time.monotonic() + 5  # the access log is written after the answer
    while time.monotonic() < deadline:
        served = server.served_by(f"GET {path}") - before
        if len(served) == server.workers and sum(served.values()) >= calls:
            return
        time.sleep(0.05)
    raise AssertionError(f"not every worker answered: {served}")


def login(server: Server, name: str) -> dict:
    with fresh(server) as client:
        answer = client.post("/users/login", json={"username": name, "password": "password123"})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.json_only
def test_disable_reaches_every_worker(tmp_path: Path) -> None:
    with Server(tmp_path / "users.json", workers=2) as server:
        with fresh(server) as client:
            for name in ("root", "marko"):
                assert client.post("/users/register", json={"username": name, "password": "password123"}).status_code == 201
        assert manage(server.env, "grant-admin", "root").returncode == 0
        admin, marko = login(server, "root"), login(server, "marko")
        every_worker_says(server, "/users/me", marko["token"], 200)  # cached by every worker now
        with fresh(server) as client:
            me = client.get("/users/me", headers=bearer(marko["token"])).json()["id"]
            assert client.post(f"/admin/users/{me}/disable", headers=bearer(admin["token"])).status_code == 200
        every_worker_says(server, "/users/me", marko["token"], 401)
        with fresh(server) as client:
            assert client.post("/users/refresh", json={"refresh_token": marko["refresh_token"]}).status_code == 401
            assert client.post("/users/login", json={"username": "marko", "password": "password123"}).status_code == 403


def test_disable_reaches_another_host(tmp_path: Path, databases: Databases) -> None:
    from test_multihost import hosts

    with hosts(tmp_path, databases.url_for(tmp_path / "database")) as (a, b):
        with fresh(a) as client:
            for name in ("root", "marko"):
                assert client.post("/users/register", json={"username": name, "password": "password123"}).status_code == 201
        assert manage(a.env, "grant-admin", "root").returncode == 0
        admin, marko = login(a, "root"), login(b, "marko")
        every_worker_says(b, "/users/me", marko["token"], 200)  # cached by host b's workers
        with fresh(a) as client:
            me = client.get("/users/me", headers=bearer(marko["token"])).json()["id"]
            assert client.post(f"/admin/users/{me}/disable", headers=bearer(admin["token"])).status_code == 200
        deadline = time.monotonic() + 2  # the NOTIFY: milliseconds; far below the cache's 30 s bound
        while time.monotonic() < deadline:
            with fresh(b) as client:
                if client.get("/users/me", headers=bearer(marko["token"])).status_code == 401:
                    break
            time.sleep(0.01)
        every_worker_says(b, "/users/me", marko["token"], 401)


async def test_a_disabled_account_s_passkey_is_refused_too(tmp_path: Path) -> None:
    """Every way in ends at accounts.start_session, which refuses a disabled account; each login is audited."""
    from test_passkeys import add_passkey, passkey_login

    from webauthn_support import SoftAuthenticator

    async for client in running(make_settings(tmp_path)):
        admin = await make_admin(client, "root")
        token = await client.token_for("marko")
        key = SoftAuthenticator()
        assert (await add_passkey(client, token, key))["status"] == 201
        marko = await user_id(client, token)
        assert (await client.post(f"/admin/users/{marko}/disable", headers=bearer(admin))).status_code == 200
        refused = await passkey_login(client, key)
        assert (refused.status_code, refused.json()) == (403, DISABLED)
        assert (await client.post(f"/admin/users/{marko}/enable", headers=bearer(admin))).status_code == 200
        assert (await passkey_login(client, key)).status_code == 200
        events = (await client.get("/admin/audit", params={"user_id": marko, "type": "login"},
                                   headers=bearer(admin))).json()["events"]
        assert [e["detail"].get("via") for e in events] == ["passkey", None]
