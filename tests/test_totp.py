"""The TOTP second factor over HTTP, on both backends, with pyotp as the authenticator app: the
life cycle (set up, confirm, log in with a code or a recovery code, turn off), that a password
alone never yields a token once it is on, code replay, recovery codes once, the ``mfa_token``'s
expiry, single use and attempt limit, and the sessions a change ends."""

import time

import pyotp
import pytest

import accounts
from conftest import Client, bearer
from store import Attempt

pytestmark = pytest.mark.anyio


def code(secret: str, steps_ahead: int = 0) -> str:
    """The app's code ``steps_ahead`` steps from now (the server accepts one step either way)."""
    return pyotp.TOTP(secret).at(time.time() + 30 * steps_ahead)


def not_a_code(secret: str) -> str:
    near = {code(secret, d) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


async def turn_on(client: Client, token: str, password: str = "password123") -> tuple[str, list[str]]:
    setup = await client.post("/users/me/totp", json={"password": password}, headers=bearer(token))
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    confirmed = await client.post("/users/me/totp/confirm", json={"code": code(secret)}, headers=bearer(token))
    assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()["recovery_codes"]


async def second_factor(client: Client, username: str = "marko", token: str | None = None) -> str:
    response = await client.login(username, token=token)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["detail"] == "Second factor required" and body["methods"] == ["totp", "recovery_code"]
    assert set(body) == {"detail", "mfa_token", "methods"}  # no token of any kind
    return body["mfa_token"]


async def test_the_whole_life_cycle(client: Client) -> None:
    token = await client.token_for("marko")
    wrong = await client.post("/users/me/totp", json={"password": "wrong-password"}, headers=bearer(token))
    assert wrong.status_code == 401
    setup = await client.post("/users/me/totp", json={"password": "password123"}, headers=bearer(token))
    assert setup.status_code == 200
    secret, uri = setup.json()["secret"], setup.json()["otpauth_uri"]
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri and "issuer=FARM" in uri
    assert (await client.login("marko")).status_code == 200  # pending: nothing changed yet
    bad = await client.post("/users/me/totp/confirm", json={"code": not_a_code(secret)}, headers=bearer(token))
    assert bad.status_code == 400 and bad.json() == {"detail": "Invalid code"}
    confirmed = await client.post("/users/me/totp/confirm", json={"code": code(secret)}, headers=bearer(token))
    assert confirmed.status_code == 200
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == len(set(codes)) == 10
    again = await client.post("/users/me/totp", json={"password": "password123"}, headers=bearer(token))
    assert again.status_code == 409  # on: it must be turned off (with a code) first

    export = (await client.get("/users/me/data", headers=bearer(token))).json()
    assert export["totp_enabled"] is True
    assert secret not in str(export) and not any(c in str(export) for c in codes)
    me = (await client.get("/users/me", headers=bearer(token))).json()
    assert secret not in str(me) and "totp_secret" not in me

    mfa = await second_factor(client)
    done = await client.post("/users/login/mfa", json={"mfa_token": mfa, "code": code(secret, 1)})
    assert done.status_code == 200, done.text
    assert {"token", "refresh_token", "device_token"} <= set(done.json())
    assert (await client.get("/users/me", headers=bearer(done.json()["token"]))).status_code == 200

    off = await client.request("DELETE", "/users/me/totp", json={"password": "password123", "code": "123"},
                               headers=bearer(token))
    assert off.status_code == 400 and off.json() == {"detail": "Invalid code"}
    off = await client.request("DELETE", "/users/me/totp", json={"password": "password123", "code": codes[0]},
                               headers=bearer(token))
    assert off.status_code == 204
    assert (await client.login("marko")).status_code == 200
    assert (await client.get("/users/me/data", headers=bearer(token))).json()["totp_enabled"] is False
    gone = await client.request("DELETE", "/users/me/totp", json={"password": "password123", "code": codes[1]},
                                headers=bearer(token))
    assert gone.status_code == 409


async def test_a_password_alone_never_yields_a_token_once_totp_is_on(client: Client) -> None:
    token = await client.token_for("marko")
    await turn_on(client, token)
    for _ in range(3):
        await second_factor(client)
    wrong = await client.login("marko", "wrong-password")
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid username and/or password"}
    mfa = await second_factor(client)
    for body in ({"mfa_token": mfa}, {"mfa_token": mfa, "code": "123456", "recovery_code": "abcde-fghjk"}):
        assert (await client.post("/users/login/mfa", json=body)).status_code == 422
    refused = await client.post("/users/login/mfa", json={"mfa_token": "made-up", "code": "123456"})
    assert refused.status_code == 401


async def test_a_code_works_once(client: Client) -> None:
    token = await client.token_for("marko")
    secret, _ = await turn_on(client, token)
    used = code(secret, 1)
    first = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client), "code": used})
    assert first.status_code == 200
    replay = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client), "code": used})
    assert replay.status_code == 401 and replay.json()["detail"].startswith("Code already used")
    # the code the confirmation used, and anything older than the last code accepted, too
    older = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client),
                                                        "code": code(secret)})
    assert older.status_code == 401


async def test_recovery_codes_work_once(client: Client) -> None:
    token = await client.token_for("marko")
    _, codes = await turn_on(client, token)
    done = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client),
                                                       "recovery_code": codes[3].upper()})
    assert done.status_code == 200  # case and the dash do not matter
    again = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client),
                                                        "recovery_code": codes[3]})
    assert again.status_code == 401 and again.json() == {"detail": "Invalid code"}
    other = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client),
                                                        "recovery_code": codes[4].replace("-", "")})
    assert other.status_code == 200
    ana = await client.token_for("ana")  # another account's codes are not this one's
    await turn_on(client, ana)
    foreign = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client, "ana"),
                                                          "recovery_code": codes[5]})
    assert foreign.status_code == 401


async def test_the_mfa_token_is_single_use_and_dies_after_five_wrong_codes(client: Client) -> None:
    token = await client.token_for("marko")
    secret, codes = await turn_on(client, token)
    mfa = await second_factor(client)
    assert (await client.post("/users/login/mfa", json={"mfa_token": mfa, "recovery_code": codes[0]})).status_code \
        == 200
    spent = await client.post("/users/login/mfa", json={"mfa_token": mfa, "recovery_code": codes[1]})
    assert spent.status_code == 401 and "mfa_token" in spent.json()["detail"]

    mfa = await second_factor(client)
    for _ in range(5):
        wrong = await client.post("/users/login/mfa", json={"mfa_token": mfa, "code": not_a_code(secret)})
        assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid code"}
    dead = await client.post("/users/login/mfa", json={"mfa_token": mfa, "recovery_code": codes[1]})
    assert dead.status_code == 401 and "mfa_token" in dead.json()["detail"]
    # the recovery code was not spent by the refused attempt
    mfa = await second_factor(client)
    assert (await client.post("/users/login/mfa", json={"mfa_token": mfa, "recovery_code": codes[1]})).status_code \
        == 200


async def test_an_expired_mfa_token_is_refused(client: Client) -> None:
    """Five minutes cannot pass in a test: the store is given a ticket that expired a second ago,
    as ``accounts.login`` writes them, and the route must refuse it."""
    token = await client.token_for("marko")
    _, codes = await turn_on(client, token)
    user = await client.app.state.store.find_user("marko")  # type: ignore[attr-defined]
    await client.app.state.store.add_mfa_token(  # type: ignore[attr-defined]
        accounts.mfa_key("an-old-token"), user.id, Attempt(time.time(), "k", ""), 5, time.time() - 1)
    expired = await client.post("/users/login/mfa", json={"mfa_token": "an-old-token", "recovery_code": codes[0]})
    assert expired.status_code == 401 and "mfa_token" in expired.json()["detail"]


async def test_the_login_after_the_second_factor_merges_a_visitor(client: Client) -> None:
    token = await client.token_for("marko")
    _, codes = await turn_on(client, token)
    visitor = await client.anonymous()
    await client.put("/cart/items/2", json={"quantity": 1}, headers=bearer(visitor))
    mfa = await second_factor(client, token=visitor)
    done = await client.post("/users/login/mfa", json={"mfa_token": mfa, "recovery_code": codes[0]},
                             headers=bearer(visitor))
    assert done.status_code == 200
    cart = await client.get("/cart", headers=bearer(done.json()["token"]))
    assert cart.json() == {"items": [{"item_id": 2, "quantity": 1}]}


async def test_turning_totp_on_ends_every_other_session(client: Client) -> None:
    token = await client.token_for("marko")
    other = await client.token_for("marko")
    setup = await client.post("/users/me/totp", json={"password": "password123"}, headers=bearer(token))
    assert (await client.get("/users/me", headers=bearer(other))).status_code == 200  # pending: no change
    secret = setup.json()["secret"]
    assert (await client.post("/users/me/totp/confirm", json={"code": code(secret)},
                              headers=bearer(token))).status_code == 200
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200
    assert (await client.get("/users/me", headers=bearer(other))).status_code == 401
    done = await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client),
                                                       "code": code(secret, 1)})
    assert done.status_code == 200
    off = await client.request("DELETE", "/users/me/totp", json={"password": "password123", "code": code(secret, -1)},
                               headers=bearer(token))
    assert off.status_code == 400  # older than the code last accepted
    confirm = await client.post("/users/me/totp/confirm", json={"code": "123456"}, headers=bearer(token))
    assert confirm.status_code == 409  # on already: nothing to confirm


async def test_turning_totp_off_ends_every_other_session(client: Client) -> None:
    token = await client.token_for("marko")
    _, codes = await turn_on(client, token)
    other = (await client.post("/users/login/mfa", json={"mfa_token": await second_factor(client),
                                                         "recovery_code": codes[0]})).json()["token"]
    off = await client.request("DELETE", "/users/me/totp", json={"password": "password123", "code": codes[1]},
                               headers=bearer(token))
    assert off.status_code == 204
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200
    assert (await client.get("/users/me", headers=bearer(other))).status_code == 401


async def test_confirm_without_a_setup_and_wrong_password_to_turn_off(client: Client) -> None:
    token = await client.token_for("marko")
    assert (await client.post("/users/me/totp/confirm", json={"code": "123456"}, headers=bearer(token))).status_code \
        == 409
    _, codes = await turn_on(client, token)
    off = await client.request("DELETE", "/users/me/totp", json={"password": "wrong-password", "code": codes[0]},
                               headers=bearer(token))
    assert off.status_code == 401
