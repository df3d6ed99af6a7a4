"""The audit log (issue #20) on both backends: a flood of failed logins folded into a bounded number
of events whose counts add up, no event for a name without an account, nothing secret in any
event, and, with real processes, events that survive a ``kill -9`` once written (the loss window is
the second before it, as for the browsing history; documented in audit.py and the README).
"""

import json
import time
from pathlib import Path

import httpx
import pytest
from test_abuse import from_address
from test_admin import manage
from test_passkeys import add_passkey
from test_totp import turn_on

from conftest import Client, bearer, make_settings, running
from server import Server, server_env
from settings import Settings
from store import AuditEvent, build_store
from webauthn_support import SoftAuthenticator

pytestmark = pytest.mark.anyio


async def all_events(settings: Settings, **filters: str) -> list[AuditEvent]:
    """Every event in the store, read by a store of its own (as another host would)."""
    store = build_store(settings)
    await store.open()
    try:
        return await store.list_audit(100_000, **filters)
    finally:
        await store.close()


async def test_a_flood_of_failed_logins_is_folded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=0, login_max_failures_per_account=0)
    async for client in running(settings):
        await client.register("marko")
        async with from_address(client, "192.0.2.1") as attacker:
            for _ in range(200):
                assert (await attacker.login("marko", "wrong-password")).status_code == 401
        async with from_address(client, "192.0.2.2") as other:
            for _ in range(3):
                assert (await other.login("marko", "wrong-password")).status_code == 401
    # stopped cleanly: every fold written
    failed = await all_events(settings, type="login_failed")
    flood = [e for e in failed if e.client == "192.0.2.1"]
    assert 1 <= len(flood) <= 2, flood  # at most two events per (account, address) and minute
    assert sum(e.detail["count"] for e in flood) == 200
    assert sum(e.detail["count"] for e in failed if e.client == "192.0.2.2") == 3
    assert {e.username for e in failed} == {"marko"}


async def test_the_refusals_of_a_flood_are_folded_too(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=2, login_max_failures_per_account=0)
    async for client in running(settings):
        await client.register("marko")
        for _ in range(30):
            await client.login("marko", "wrong-password")
    events = await all_events(settings)
    failed = [e for e in events if e.type == "login_failed"]
    locked = [e for e in events if e.type == "locked"]
    assert sum(e.detail["count"] for e in failed) == 2 and len(failed) <= 2
    assert sum(e.detail["count"] for e in locked) == 28 and len(locked) <= 2


async def test_folded_failures_are_visible_once_their_minute_is_over(tmp_path: Path) -> None:
    """The first failure of a pair is written at once; the rest when the fold closes (at the latest at a stop)."""
    async for client in running(make_settings(tmp_path)):
        await client.register("marko")
        for _ in range(3):
            assert (await client.login("marko", "wrong-password")).status_code == 401
        token = (await client.login("marko")).json()["token"]
        events = (await client.get("/users/me/activity", headers=bearer(token))).json()["events"]
        assert [(e["type"], e["detail"].get("count")) for e in events] == [
            ("login", None), ("login_failed", 1), ("register", None)]
        client.app.state.audit._fold_seconds = 0  # type: ignore[attr-defined]  # as if the minute were over
        events = (await client.get("/users/me/activity", headers=bearer(token))).json()["events"]
        folded = [e for e in events if e["detail"].get("folded")]
        assert len(folded) == 1 and folded[0]["detail"]["count"] == 2


async def test_second_factors_and_passkeys_are_in_the_owners_activity(client: Client) -> None:
    """Adding and removing a passkey, turning TOTP on and off: each is an event of the account,
    newest first, the passkey's id in its detail and no secret anywhere."""
    token = await client.token_for("marko")
    added = await add_passkey(client, token, SoftAuthenticator(), name="laptop")
    assert added["status"] == 201, added
    assert (await client.delete(f"/users/me/passkeys/{added['id']}", headers=bearer(token))).status_code == 204
    secret, recovery = await turn_on(client, token)  # its code is spent: a recovery code turns it off
    disabled = await client.request("DELETE", "/users/me/totp", json={"password": "password123", "code": recovery[0]},
                                    headers=bearer(token))
    assert disabled.status_code == 204, disabled.text
    events = (await client.get("/users/me/activity", headers=bearer(token))).json()["events"]
    assert [e["type"] for e in events][:4] == ["totp_disabled", "totp_enabled", "passkey_removed", "passkey_added"]
    assert events[2]["detail"]["passkey_id"] == events[3]["detail"]["passkey_id"] == added["id"]
    assert events[3]["detail"]["name"] == "laptop"
    assert secret not in json.dumps(events)


async def test_no_event_for_a_name_without_an_account(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async for client in running(settings):
        for _ in range(3):
            assert (await client.login("nobody", "wrong-password")).status_code == 401
    assert await all_events(settings) == []


async def test_no_event_holds_a_secret(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, refresh_reuse_grace_seconds=0)
    secrets: list[str] = ["password123", "another-password", "wrong-password"]
    async for client in running(settings):
        session = await client.session_for("marko")
        secrets += [session["token"], session["refresh_token"], session["device_token"]]
        await client.login("marko", "wrong-password")
        rotated = (await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})).json()
        secrets += [rotated["token"], rotated["refresh_token"]]
        await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})  # reuse
        fresh = (await client.login("marko")).json()
        await client.post("/users/me/password", json={"current_password": "password123",
                                                      "new_password": "another-password"},
                          headers=bearer(fresh["token"]))
        last = (await client.login("marko", "another-password")).json()
        secrets += [fresh["token"], last["token"], last["refresh_token"]]
        await client.request("DELETE", "/users/me", json={"password": "another-password"},
                             headers=bearer(last["token"]))
        store = client.app.state.store  # type: ignore[attr-defined]
        secrets.append("$2b$")  # any bcrypt hash
        assert await store.find_user("marko") is None
    events = await all_events(settings)
    assert {"register", "login", "login_failed", "refresh_reuse", "password_changed", "account_deleted"} <= {
        e.type for e in events}
    text = json.dumps([e.__repr__() for e in events])
    for secret in secrets:
        assert secret not in text


async def test_retention_drops_old_events(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = build_store(settings)
    await store.open()
    try:
        now = time.time()
        old = AuditEvent(f"{int((now - 5 * 86400) * 1e6):016x}00000000", now - 5 * 86400, "login", "u", "marko",
                         "10.0.0.1", None, {})
        new = AuditEvent(f"{int(now * 1e6):016x}00000000", now, "login", "u", "marko", "10.0.0.1", None, {})
        await store.record_audit([old, new])
        assert [e.id for e in await store.list_audit(10)] == [new.id, old.id]
        assert await store.prune_audit(now - 2 * 86400) == 1
        assert [e.id for e in await store.list_audit(10)] == [new.id]
    finally:
        await store.close()


# -- real processes: kill -9 -------------------------------------------------------------------------


def env_of(settings: Settings) -> dict[str, str]:
    """A server's environment on ``settings``' store (the JSON file, or its PostgreSQL database)."""
    url = settings.database_url.get_secret_value() if settings.database_url else None
    return server_env(settings.users_file, DATABASE_URL=url, JWT_SECRET=settings.secret)


async def test_written_events_survive_kill_9(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    env = env_of(settings)
    with Server(settings.users_file, workers=2, env=env) as server:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            for name in ("root", "marko"):
                assert client.post("/users/register", json={"username": name, "password": "password123"}).status_code == 201
            assert client.post("/users/login", json={"username": "marko", "password": "wrong-pass"}).status_code == 401
            assert client.post("/users/login", json={"username": "marko", "password": "password123"}).status_code == 200
        expected = {("register", "root"), ("register", "marko"), ("login_failed", "marko"), ("login", "marko")}
        deadline = time.monotonic() + 10  # written about a second after their requests (no request asks for them)
        while {(e.type, e.username) for e in await all_events(settings)} != expected:
            assert time.monotonic() < deadline, await all_events(settings)
            time.sleep(0.1)
        server.kill()
    assert manage(env, "grant-admin", "root").returncode == 0
    with Server(settings.users_file, workers=2, env=env) as restarted, \
            httpx.Client(base_url=restarted.url, timeout=20) as client:
        token = client.post("/users/login", json={"username": "root", "password": "password123"}).json()["token"]
        events = client.get("/admin/audit", headers=bearer(token)).json()["events"]
        assert expected <= {(e["type"], e["username"]) for e in events}
