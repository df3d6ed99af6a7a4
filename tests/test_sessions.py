"""Refresh-token rotation, reuse detection, logout, logout-all, and brute-force throttling."""

import asyncio
import time
from pathlib import Path

import pytest

from conftest import Client, assert_refresh_answer, bearer, make_settings, running
from store import Attempt

pytestmark = pytest.mark.anyio


async def me(client: Client, token: str) -> int:
    return (await client.get("/users/me", headers=bearer(token))).status_code


async def test_refresh_rotates_both_tokens(client: Client) -> None:
    first = await client.session_for("marko")
    response = await client.post("/users/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200
    second = response.json()
    assert second["token"] != first["token"] and second["refresh_token"] != first["refresh_token"]
    assert await me(client, second["token"]) == 200
    third = await client.post("/users/refresh", json={"refresh_token": second["refresh_token"]})
    assert third.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_family(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, refresh_reuse_grace_seconds=0)):
        await _reuse_revokes_the_family(client)


async def _reuse_revokes_the_family(client: Client) -> None:
    victim = await client.session_for("marko")
    stolen = victim["refresh_token"]
    rotated = (await client.post("/users/refresh", json={"refresh_token": stolen})).json()
    assert_refresh_answer(rotated)
    reuse = await client.post("/users/refresh", json={"refresh_token": stolen})
    assert reuse.status_code == 401
    for token in (victim["token"], rotated["token"]):
        assert await me(client, token) == 401
    assert (await client.post("/users/refresh", json={"refresh_token": rotated["refresh_token"]})).status_code == 401
    other_session = await client.login("marko")  # a fresh login still works
    assert other_session.status_code == 200


async def test_logout_revokes_access_and_refresh_tokens(client: Client) -> None:
    session = await client.session_for("marko")
    other = (await client.login("marko")).json()  # another device
    response = await client.post("/users/logout", headers=bearer(session["token"]),
                                 json={"refresh_token": session["refresh_token"]})
    assert response.status_code == 204
    assert await me(client, session["token"]) == 401
    assert (await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})).status_code == 401
    assert await me(client, other["token"]) == 200  # only this session ended


async def test_logout_without_body(client: Client) -> None:
    session = await client.session_for("marko")
    assert (await client.post("/users/logout", headers=bearer(session["token"]))).status_code == 204
    assert await me(client, session["token"]) == 401
    assert (await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})).status_code == 401


async def test_logout_all_ends_every_session(client: Client) -> None:
    sessions = [await client.session_for("marko")] + [(await client.login("marko")).json() for _ in range(2)]
    assert (await client.post("/users/logout-all", headers=bearer(sessions[0]["token"]))).status_code == 204
    for session in sessions:
        assert await me(client, session["token"]) == 401
        assert (await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})).status_code == 401
    fresh = (await client.login("marko")).json()
    assert await me(client, fresh["token"]) == 200


async def test_logout_needs_a_registered_token(client: Client) -> None:
    assert (await client.post("/users/logout")).status_code == 401
    assert (await client.post("/users/logout", headers=bearer(await client.anonymous()))).status_code == 403


async def test_refresh_with_garbage_is_401(client: Client) -> None:
    for token in ("garbage", "a.b.c", await client.anonymous()):
        assert (await client.post("/users/refresh", json={"refresh_token": token})).status_code == 401


async def test_lockout_after_failures_for_that_username_only(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=3, login_lockout_seconds=600)):
        await client.register("marko", "marko123")
        await client.register("ana", "password123")
        assert [(await client.login("marko", "wrong-pass")).status_code for _ in range(3)] == [401] * 3
        locked = await client.login("marko", "marko123")  # even the right password
        assert locked.status_code == 429 and 590 <= int(locked.headers["retry-after"]) <= 600
        assert "detail" in locked.json()
        assert (await client.login("MARKO", "marko123")).status_code == 429  # same account, other spelling
        assert (await client.login("ana", "password123")).status_code == 200


async def test_unknown_usernames_are_throttled_the_same_way(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=3)):
        await client.register("marko", "marko123")
        known = [(await client.login("marko", "wrong-pass")) for _ in range(4)]
        unknown = [(await client.login("ghost", "wrong-pass")) for _ in range(4)]
        assert [r.status_code for r in known] == [r.status_code for r in unknown] == [401, 401, 401, 429]
        assert known[-1].json() == unknown[-1].json()


async def test_success_resets_the_failure_count(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=3)):
        await client.register("marko", "marko123")
        for _ in range(2):
            assert (await client.login("marko", "wrong-pass")).status_code == 401
        assert (await client.login("marko", "marko123")).status_code == 200
        for _ in range(2):
            assert (await client.login("marko", "wrong-pass")).status_code == 401
        assert (await client.login("marko", "marko123")).status_code == 200


async def test_lockout_ends_after_the_window(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=2, login_lockout_seconds=1)):
        await client.register("marko", "marko123")
        for _ in range(2):
            await client.login("marko", "wrong-pass")
        assert (await client.login("marko", "marko123")).status_code == 429
        await asyncio.sleep(1.1)
        assert (await client.login("marko", "marko123")).status_code == 200


async def test_revocations_survive_a_restart_and_expired_entries_are_pruned(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=2)
    async for client in running(settings):
        ended = await client.session_for("marko")
        kept = (await client.login("marko")).json()
        await client.post("/users/logout", headers=bearer(ended["token"]))
        store = client.app.state.store  # type: ignore[attr-defined]
        expired = await store.complete_login(await store.find_user("marko"), Attempt(0.0, "name-key", "127.0.0.1"),
                                             "jti", time.time() - 1)
        for _ in range(2):
            await client.login("marko", "wrong-pass")
    async for client in running(settings):  # restarted: the lifespan prunes at start
        assert await me(client, ended["token"]) == 401
        assert await me(client, kept["token"]) == 200
        assert (await client.login("marko", "marko123")).status_code == 429  # the lockout survived too
        store = client.app.state.store  # type: ignore[attr-defined]
        user = await store.find_user("marko")
        assert await store.session_user(expired, user.id) is None
        assert len((await store.export_user(user.id))["sessions"]) == 1


async def test_concurrent_guesses_cannot_slip_past_the_limit(tmp_path: Path) -> None:
    """Each attempt is counted before its password is checked, so 40 guesses in flight at once
    still get only the allowed number of checks."""
    async for client in running(make_settings(tmp_path, login_max_failures=5)):
        await client.register("victim", "correct-horse")
        results = await asyncio.gather(*(client.login("victim", f"guess-{i:04d}") for i in range(40)))
        codes = sorted(r.status_code for r in results)
        assert codes == [401] * 5 + [429] * 35


async def test_changing_the_cost_rehashes_at_login(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        await client.register("marko", "marko123")
    async for client in running(make_settings(tmp_path, bcrypt_rounds=5)):
        store = client.app.state.store  # type: ignore[attr-defined]
        assert (await store.find_user("marko")).password.startswith("$2b$04$")
        assert (await client.login("marko", "marko123")).status_code == 200
        assert (await store.find_user("marko")).password.startswith("$2b$05$")
        assert (await client.login("marko", "marko123")).status_code == 200
