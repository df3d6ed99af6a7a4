"""Each user's own devices and security activity (issue #20), over HTTP on both backends: the list
of the account's sessions, signing one device out, and the account's audit events; and, with real
processes, a signed-out device refused by every worker.
"""

from pathlib import Path

import pytest
from test_abuse import from_address
from test_admin import every_worker_says, fresh, login

from conftest import Client, bearer, make_settings, running
from server import Server

pytestmark = pytest.mark.anyio


async def login_as(client: Client, name: str, agent: str) -> dict:
    answer = await client.post("/users/login", json={"username": name, "password": "password123"},
                               headers={"User-Agent": agent})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_the_sessions_list_marks_this_device(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        await client.register("marko")
        laptop = await login_as(client, "marko", "Laptop/1.0")
        async with from_address(client, "203.0.113.7") as phone_client:
            phone = await login_as(phone_client, "marko", "Phone/2.0 " + "x" * 500)
        await client.token_for("other")  # another account's session is not listed
        answer = await client.get("/users/me/sessions", headers=bearer(laptop["token"]))
        assert answer.status_code == 200, answer.text
        sessions = answer.json()["sessions"]
        assert [s["current"] for s in sessions] == [False, True]  # newest first: the phone's
        assert sessions[0]["client"] == "203.0.113.7" and sessions[0]["user_agent"] == ("Phone/2.0 " + "x" * 500)[:200]
        assert sessions[1]["user_agent"] == "Laptop/1.0" and sessions[1]["client"] == "127.0.0.1"
        assert set(sessions[0]) == {"id", "created_at", "last_used_at", "client", "user_agent", "current"}
        assert "jti" not in answer.text and laptop["refresh_token"] not in answer.text
        from_phone = (await client.get("/users/me/sessions", headers=bearer(phone["token"]))).json()["sessions"]
        assert [s["current"] for s in from_phone] == [True, False]


async def test_a_refresh_notes_when_and_where(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        await client.register("marko")
        first = await login_as(client, "marko", "Old/1")
        before = (await client.get("/users/me/sessions", headers=bearer(first["token"]))).json()["sessions"][0]
        async with from_address(client, "198.51.100.9") as moved:
            answer = await moved.post("/users/refresh", json={"refresh_token": first["refresh_token"]},
                                      headers={"User-Agent": "New/2"})
        assert answer.status_code == 200, answer.text
        after = (await client.get("/users/me/sessions", headers=bearer(answer.json()["token"]))).json()["sessions"][0]
        assert after["id"] == before["id"] and after["created_at"] == before["created_at"]
        assert after["last_used_at"] > before["last_used_at"]
        assert (after["client"], after["user_agent"]) == ("198.51.100.9", "New/2")


async def test_signing_one_device_out(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        here = await client.session_for("marko")
        there = (await client.login("marko")).json()
        stranger = await client.session_for("eve")
        sessions = (await client.get("/users/me/sessions", headers=bearer(here["token"]))).json()["sessions"]
        there_id = next(s["id"] for s in sessions if not s["current"])
        eve_id = (await client.get("/users/me/sessions", headers=bearer(stranger["token"]))).json()["sessions"][0]["id"]
        for other_id in (eve_id, "no-such-session"):  # another account's, or none: the same answer
            answer = await client.delete(f"/users/me/sessions/{other_id}", headers=bearer(here["token"]))
            assert (answer.status_code, answer.json()) == (404, {"detail": "Session not found"})
        assert (await client.get("/users/me", headers=bearer(stranger["token"]))).status_code == 200
        assert (await client.delete("/users/me/sessions/bad%20id", headers=bearer(here["token"]))).status_code == 422
        assert (await client.delete(f"/users/me/sessions/{there_id}", headers=bearer(here["token"]))).status_code == 204
        assert (await client.get("/users/me", headers=bearer(there["token"]))).status_code == 401
        assert (await client.post("/users/refresh", json={"refresh_token": there["refresh_token"]})).status_code == 401
        assert (await client.get("/users/me", headers=bearer(here["token"]))).status_code == 200
        left = (await client.get("/users/me/sessions", headers=bearer(here["token"]))).json()["sessions"]
        assert [s["current"] for s in left] == [True]
        assert (await client.delete(f"/users/me/sessions/{there_id}", headers=bearer(here["token"]))).status_code == 404
        visitor = await client.anonymous()
        assert (await client.get("/users/me/sessions", headers=bearer(visitor))).status_code == 403
        assert (await client.get("/users/me/sessions")).status_code == 401


async def test_activity_is_the_account_s_own_events(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        await client.register("marko")
        async with from_address(client, "192.0.2.66") as attacker:
            assert (await attacker.login("marko", "guess-one")).status_code == 401
        token = (await login_as(client, "marko", "Mine/1"))["token"]
        await client.token_for("other")
        sessions = (await client.get("/users/me/sessions", headers=bearer(token))).json()["sessions"]
        answer = await client.get("/users/me/activity", headers=bearer(token))
        assert answer.status_code == 200, answer.text
        events = answer.json()["events"]
        assert [e["type"] for e in events] == ["login", "login_failed", "register"]
        assert {e["username"] for e in events} == {"marko"}
        failed = events[1]
        assert failed["client"] == "192.0.2.66" and failed["detail"]["count"] == 1
        assert events[0]["user_agent"] == "Mine/1" and events[0]["detail"]["session_id"] == sessions[0]["id"]
        assert "guess-one" not in answer.text and token not in answer.text
        first = (await client.get("/users/me/activity", params={"limit": 2}, headers=bearer(token))).json()
        assert [e["type"] for e in first["events"]] == ["login", "login_failed"] and first["next_cursor"]
        rest = (await client.get("/users/me/activity", params={"limit": 2, "cursor": first["next_cursor"]},
                                 headers=bearer(token))).json()
        assert [e["type"] for e in rest["events"]] == ["register"] and rest["next_cursor"] is None
        for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "zz"}):
            assert (await client.get("/users/me/activity", params=bad, headers=bearer(token))).status_code == 422


async def test_own_actions_are_in_the_activity(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path)):
        here = await client.session_for("marko")
        assert (await client.login("marko")).status_code == 200
        sessions = (await client.get("/users/me/sessions", headers=bearer(here["token"]))).json()["sessions"]
        there_id = next(s["id"] for s in sessions if not s["current"])
        await client.delete(f"/users/me/sessions/{there_id}", headers=bearer(here["token"]))
        assert (await client.post("/users/refresh", json={"refresh_token": here["refresh_token"]})).status_code == 200
        reused = await client.post("/users/refresh", json={"refresh_token": here["refresh_token"]})
        assert reused.status_code == 200  # within the grace period: the current pair again
        new = (await client.login("marko")).json()
        changed = await client.post("/users/me/password", json={"current_password": "password123",
                                                                 "new_password": "another-password"},
                                    headers=bearer(new["token"]))
        assert changed.status_code == 204
        assert (await client.post("/users/logout", headers=bearer(new["token"]))).status_code == 204
        last = (await client.login("marko", "another-password")).json()
        assert (await client.post("/users/logout-all", headers=bearer(last["token"]))).status_code == 204
        final = (await client.login("marko", "another-password")).json()
        events = (await client.get("/users/me/activity", headers=bearer(final["token"]))).json()["events"]
        assert [e["type"] for e in reversed(events)] == [
            "register", "login", "login", "session_ended", "login", "password_changed", "logout", "login",
            "logout_all", "login"]
        assert events[-4]["detail"]["session_id"] == there_id  # session_ended names the device


async def test_refresh_reuse_is_in_the_activity(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, refresh_reuse_grace_seconds=0)):
        tokens = await client.session_for("marko")
        assert (await client.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 200
        assert (await client.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401
        token = (await client.login("marko")).json()["token"]
        types = [e["type"] for e in (await client.get("/users/me/activity", headers=bearer(token))).json()["events"]]
        assert types[:2] == ["login", "refresh_reuse"]


@pytest.mark.json_only
def test_a_signed_out_device_is_refused_by_every_worker(tmp_path: Path) -> None:
    with Server(tmp_path / "users.json", workers=2) as server:
        with fresh(server) as client:
            assert client.post("/users/register", json={"username": "marko", "password": "password123"}).status_code == 201
        here, there = login(server, "marko"), login(server, "marko")
        every_worker_says(server, "/users/me", there["token"], 200)
        with fresh(server) as client:
            sessions = client.get("/users/me/sessions", headers=bearer(here["token"])).json()["sessions"]
            there_id = next(s["id"] for s in sessions if not s["current"])
            assert client.delete(f"/users/me/sessions/{there_id}", headers=bearer(here["token"])).status_code == 204
        every_worker_says(server, "/users/me", there["token"], 401)
        every_worker_says(server, "/users/me", here["token"], 200)
