"""The core contract of /users, through HTTP against the real app."""

import asyncio
import json
import os
import stat
import time

import pytest

from conftest import Client, assert_account, assert_login_answer, bearer

pytestmark = pytest.mark.anyio


async def test_register_returns_id_and_username_only(client: Client) -> None:
    response = await client.register("marko", "marko123")
    assert response.status_code == 201
    assert_account(response.json(), "marko")


async def test_duplicate_username_is_409_case_and_width_insensitive(client: Client) -> None:
    assert (await client.register("Marko")).status_code == 201
    for name in ("Marko", "marko", "MARKO", "ｍａｒｋｏ"):  # the last one is full-width (NFKC)
        response = await client.register(name)
        assert response.status_code == 409, name
        assert response.json() == {"detail": "Username already taken"}


@pytest.mark.parametrize("username", ["ab", "a" * 16, "has space", "semi;colon", "new\nline", "nul\x00byte", ""])
async def test_invalid_usernames_are_422(client: Client, username: str) -> None:
    assert (await client.register(username)).status_code == 422


@pytest.mark.parametrize("username", ["abc", "a" * 15, "dot.name", "dash-name", "under_score", "Zoë", "用户名"])
async def test_valid_usernames_are_accepted(client: Client, username: str) -> None:
    assert (await client.register(username)).status_code == 201


@pytest.mark.parametrize("password", ["short", "1234567", "é" * 37, "x" * 73, "with\x00nul1"])
async def test_invalid_passwords_are_422_never_truncated(client: Client, password: str) -> None:
    response = await client.register("someone", password)
    assert response.status_code == 422
    assert (await client.register("someone", "validpassword")).status_code == 201


async def test_72_byte_password_works_and_73rd_byte_matters(client: Client) -> None:
    password = "é" * 36  # 72 bytes in UTF-8
    assert (await client.register("longpw", password)).status_code == 201
    assert (await client.login("longpw", password)).status_code == 200
    assert (await client.login("longpw", password[:-1] + "e")).status_code == 401


async def test_login_returns_a_bearer_token(client: Client) -> None:
    await client.register("marko", "marko123")
    response = await client.login("marko", "marko123")
    assert response.status_code == 200
    assert_login_answer(response.json(), expires_in=30 * 60)


async def test_login_with_other_case_of_the_username_works(client: Client) -> None:
    await client.register("Marko", "marko123")
    assert (await client.login("marko", "marko123")).status_code == 200


async def test_wrong_password_and_unknown_user_get_the_same_401(client: Client) -> None:
    await client.register("marko", "marko123")
    wrong = await client.login("marko", "wrongpass")
    unknown = await client.login("nobody", "wrongpass")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "Invalid username and/or password"}


async def test_unknown_user_costs_a_bcrypt_verification_too(client: Client) -> None:
    """Same timing: an unknown user is checked against a dummy hash. Compare medians of the two
    paths relative to each other (no absolute limit), at a cost where bcrypt dominates."""
    auth = client.app.state.auth  # type: ignore[attr-defined]
    auth.pwd_context.update(bcrypt__rounds=10)
    auth._dummy_hash = auth.pwd_context.hash("dummy")
    await client.register("timed", "password123")  # hashed at cost 10

    times: dict[str, list[float]] = {"timed": [], "nobody-here": []}
    for _ in range(4):  # interleaved, so a burst of load elsewhere on the machine slows both alike
        for username, samples in times.items():
            start = time.perf_counter()
            assert (await client.login(username, "wrong-password")).status_code == 401
            samples.append(time.perf_counter() - start)
    known, unknown = (sorted(samples)[1] for samples in times.values())  # the lower median of four
    assert 0.5 < unknown / known < 2, times


async def test_list_and_me(client: Client) -> None:
    token = await client.token_for("marko", "marko123")
    await client.register("ana", "password123")
    me = await client.get("/users/me", headers=bearer(token))
    assert me.status_code == 200
    assert_account(me.json(), "marko", own=True)
    listing = await client.get("/users/list", headers=bearer(token))
    assert listing.status_code == 200
    users = listing.json()["users"]
    assert sorted(u["username"] for u in users) == ["ana", "marko"]
    for user in users:
        assert_account(user, user["username"])


async def test_no_response_ever_contains_a_hash(client: Client) -> None:
    token = await client.token_for("marko", "marko123")
    for path in ("/users/me", "/users/list"):
        assert "$2b$" not in (await client.get(path, headers=bearer(token))).text


async def test_missing_token_is_401_not_authenticated(client: Client) -> None:
    for path in ("/users/me", "/users/list"):
        response = await client.get(path)
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}
        assert response.headers["www-authenticate"] == "Bearer"


async def test_concurrent_registrations_one_winner_and_group_commit(client: Client) -> None:
    names = [f"user{i}" for i in range(50)]
    results = await asyncio.gather(*(client.register(n) for n in names), *(client.register("same") for _ in range(20)))
    assert [r.status_code for r in results[:50]] == [201] * 50
    assert sorted(r.status_code for r in results[50:]) == [201] + [409] * 19
    token = await client.token_for("checker")
    users = (await client.get("/users/list?limit=100", headers=bearer(token))).json()["users"]
    assert len(users) == 52


@pytest.mark.json_only  # edits or reads the JSON file itself
async def test_store_file_is_private_and_in_the_books_format(client: Client, settings) -> None:
    await client.register("marko", "marko123")
    path = settings.users_file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(path) + ".journal").st_mode) == 0o600
    await client.app.state.store.close()  # type: ignore[attr-defined]  # a clean stop folds the journal
    await client.app.state.store.open()  # type: ignore[attr-defined]
    users = json.loads(path.read_text())["users"]
    assert [u["username"] for u in users] == ["marko"] and users[0]["password"].startswith("$2b$04$")


async def test_delete_me_removes_the_account_and_its_tokens(client: Client) -> None:
    token = await client.token_for("leaving")
    deleted = await client.request("DELETE", "/users/me", json={"password": "password123"}, headers=bearer(token))
    assert deleted.status_code == 204
    response = await client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401 and response.json() == {"detail": "Invalid token"}
    assert (await client.login("leaving")).status_code == 401
