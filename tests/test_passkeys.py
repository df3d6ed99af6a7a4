"""Passkeys over HTTP, on both backends, with a software authenticator (tests/webauthn_support.py):
registration, the list, removal, passwordless login, and every refusal the issue names (wrong
origin or RP, a replayed or spent challenge, an unknown credential, a counter going back,
another account's passkey), plus the sessions a change ends and the login budget."""

import copy
from pathlib import Path

import pytest

from conftest import Client, bearer, make_settings, running
from webauthn_support import SoftAuthenticator, b64url, unb64url

pytestmark = pytest.mark.anyio


async def add_passkey(client: Client, token: str, authenticator: SoftAuthenticator, name: str | None = None,
                      **create: str) -> dict:
    options = await client.post("/users/me/passkeys/options", headers=bearer(token))
    assert options.status_code == 200, options.text
    body = {"credential": authenticator.create(options.json(), **create)}
    if name is not None:
        body["name"] = name
    response = await client.post("/users/me/passkeys", json=body, headers=bearer(token))
    return {"status": response.status_code, **response.json()}


async def login_options(client: Client) -> dict:
    response = await client.post("/users/login/passkey/options")
    assert response.status_code == 200, response.text
    return response.json()


async def passkey_login(client: Client, authenticator: SoftAuthenticator, token: str | None = None, **get: object):
    credential = authenticator.get(await login_options(client), **get)  # type: ignore[arg-type]
    return await client.post("/users/login/passkey", json={"credential": credential},
                             headers=bearer(token) if token else None)


async def test_register_list_login_and_remove(client: Client) -> None:
    token = await client.token_for("marko")
    options = (await client.post("/users/me/passkeys/options", headers=bearer(token))).json()
    assert options["rp"] == {"id": "localhost", "name": "FARM auth"} and options["excludeCredentials"] == []
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    key = SoftAuthenticator()
    added = await client.post("/users/me/passkeys", json={"credential": key.create(options), "name": "Laptop"},
                              headers=bearer(token))
    assert added.status_code == 201, added.text
    assert set(added.json()) == {"id", "name", "created_at"} and added.json()["name"] == "Laptop"
    listed = (await client.get("/users/me/passkeys", headers=bearer(token))).json()["passkeys"]
    assert listed == [{**added.json(), "last_used_at": None}]
    again = (await client.post("/users/me/passkeys/options", headers=bearer(token))).json()
    assert [c["id"] for c in again["excludeCredentials"]] == [key.id]  # no second passkey on this authenticator

    request_options = await login_options(client)
    assert request_options["allowCredentials"] == [] and request_options["rpId"] == "localhost"
    login = await client.post("/users/login/passkey", json={"credential": key.get(request_options)})
    assert login.status_code == 200, login.text
    assert {"token", "refresh_token", "device_token", "token_type", "expires_in"} <= set(login.json())
    me = await client.get("/users/me", headers=bearer(login.json()["token"]))
    assert me.json()["username"] == "marko"
    refreshed = await client.post("/users/refresh", json={"refresh_token": login.json()["refresh_token"]})
    assert refreshed.status_code == 200
    used = (await client.get("/users/me/passkeys", headers=bearer(token))).json()["passkeys"][0]
    assert used["last_used_at"] is not None
    export = (await client.get("/users/me/data", headers=bearer(token))).json()
    assert export["passkeys"] == [used] and export["totp_enabled"] is False
    assert "public_key" not in str(export) and "credential" not in str(export)

    deleted = await client.delete(f"/users/me/passkeys/{added.json()['id']}", headers=bearer(token))
    assert deleted.status_code == 204
    assert (await client.get("/users/me/passkeys", headers=bearer(token))).json() == {"passkeys": []}
    assert (await passkey_login(client, key)).json() == {"detail": "Invalid passkey"}


async def test_default_name_and_anonymous_merge(client: Client) -> None:
    token = await client.token_for("ana")
    key = SoftAuthenticator()
    added = await add_passkey(client, token, key)
    assert added["status"] == 201 and added["name"] == "Passkey"
    visitor = await client.anonymous()
    assert (await client.put("/cart/items/3", json={"quantity": 2}, headers=bearer(visitor))).status_code == 200
    login = await passkey_login(client, key, token=visitor)
    assert login.status_code == 200, login.text
    cart = await client.get("/cart", headers=bearer(login.json()["token"]))
    assert cart.json() == {"items": [{"item_id": 3, "quantity": 2}]}
    assert (await client.get("/cart", headers=bearer(visitor))).status_code == 401  # the visitor moved in


async def test_registration_refusals(client: Client) -> None:
    token = await client.token_for("marko")
    wrong_origin = await add_passkey(client, token, SoftAuthenticator(), origin="https://evil.example")
    assert wrong_origin["status"] == 400 and "origin" in wrong_origin["detail"]
    wrong_rp = await add_passkey(client, token, SoftAuthenticator(), rp_id="evil.example")
    assert wrong_rp["status"] == 400 and "RP ID" in wrong_rp["detail"]
    bad_attestation = await add_passkey(client, token, SoftAuthenticator(), fmt="packed")  # no signature in it
    assert bad_attestation["status"] == 400 and bad_attestation["detail"].startswith("Invalid passkey registration")

    # a challenge works once: the same answer again, or a second answer to the same options
    options = (await client.post("/users/me/passkeys/options", headers=bearer(token))).json()
    key = SoftAuthenticator()
    credential = key.create(options)
    assert (await client.post("/users/me/passkeys", json={"credential": credential},
                              headers=bearer(token))).status_code == 201
    replay = await client.post("/users/me/passkeys", json={"credential": credential}, headers=bearer(token))
    assert replay.status_code == 400 and "challenge" in replay.json()["detail"]
    other = await client.post("/users/me/passkeys", json={"credential": SoftAuthenticator().create(options)},
                              headers=bearer(token))
    assert other.status_code == 400 and "challenge" in other.json()["detail"]

    # another account's options cannot register a passkey here
    ana = await client.token_for("ana")
    foreign = (await client.post("/users/me/passkeys/options", headers=bearer(ana))).json()
    stolen = await client.post("/users/me/passkeys", json={"credential": SoftAuthenticator().create(foreign)},
                               headers=bearer(token))
    assert stolen.status_code == 400
    # the same authenticator's credential on a second account: refused, whatever the options
    twice = await add_passkey(client, ana, key)
    assert twice["status"] == 400 and twice["detail"] == "This passkey is already registered"

    for junk in ({}, {"id": 1}, {"response": "x"}, {"response": {"clientDataJSON": "!!"}},
                 {"response": {"clientDataJSON": b64url(b'{"challenge": 5}')}}):
        answer = await client.post("/users/me/passkeys", json={"credential": junk}, headers=bearer(token))
        assert answer.status_code == 400, (junk, answer.text)
    anonymous = await client.anonymous()
    assert (await client.post("/users/me/passkeys/options", headers=bearer(anonymous))).status_code == 403
    assert (await client.post("/users/me/passkeys/options")).status_code == 401


async def test_login_refusals(client: Client) -> None:
    token = await client.token_for("marko")
    key = SoftAuthenticator()
    assert (await add_passkey(client, token, key))["status"] == 201

    async def refused(response) -> None:  # type: ignore[no-untyped-def]
        assert response.status_code == 401 and response.json() == {"detail": "Invalid passkey"}, response.text

    await refused(await passkey_login(client, key, origin="https://evil.example"))
    await refused(await passkey_login(client, key, rp_id="evil.example"))
    await refused(await passkey_login(client, SoftAuthenticator()))  # unknown credential

    # a replayed answer (its challenge is spent)
    credential = key.get(await login_options(client))
    assert (await client.post("/users/login/passkey", json={"credential": credential})).status_code == 200
    await refused(await client.post("/users/login/passkey", json={"credential": credential}))

    # a challenge nobody handed out, and a bad signature
    forged = key.get({"challenge": b64url(b"x" * 32)})
    await refused(await client.post("/users/login/passkey", json={"credential": forged}))
    tampered = key.get(await login_options(client))
    signature = bytearray(unb64url(tampered["response"]["signature"]))
    signature[-1] ^= 1
    tampered["response"]["signature"] = b64url(bytes(signature))
    await refused(await client.post("/users/login/passkey", json={"credential": tampered}))

    # the counter going backwards (a cloned authenticator), or standing still
    assert (await passkey_login(client, key, sign_count=10)).status_code == 200
    await refused(await passkey_login(client, key, sign_count=7))
    await refused(await passkey_login(client, key, sign_count=10))
    assert (await passkey_login(client, key, sign_count=11)).status_code == 200

    # another account's user handle with this credential
    swapped = key.get(await login_options(client))
    swapped["response"]["userHandle"] = b64url(b"someone-else")
    await refused(await client.post("/users/login/passkey", json={"credential": swapped}))

    for junk in ({}, {"id": "x" * 20}, {"response": []}, {"id": key.id, "response": {"clientDataJSON": 3}}):
        answer = await client.post("/users/login/passkey", json={"credential": junk})
        assert answer.status_code == 401, (junk, answer.text)
    assert (await client.post("/users/login/passkey", json={})).status_code == 422


async def test_removing_another_accounts_passkey_is_a_404(client: Client) -> None:
    marko = await client.token_for("marko")
    ana = await client.token_for("ana")
    added = await add_passkey(client, marko, SoftAuthenticator())
    for path in (f"/users/me/passkeys/{added['id']}", "/users/me/passkeys/" + "0" * 32, "/users/me/passkeys/x%00y"):
        answer = await client.delete(path, headers=bearer(ana))
        assert answer.status_code == 404 and answer.json() == {"detail": "No such passkey"}, path
    assert len((await client.get("/users/me/passkeys", headers=bearer(marko))).json()["passkeys"]) == 1


async def test_adding_or_removing_a_passkey_ends_every_other_session(client: Client) -> None:
    token = await client.token_for("marko")
    other = await client.token_for("marko")
    added = await add_passkey(client, token, SoftAuthenticator())
    assert added["status"] == 201
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200
    assert (await client.get("/users/me", headers=bearer(other))).status_code == 401
    third = await client.token_for("marko")
    assert (await client.delete(f"/users/me/passkeys/{added['id']}", headers=bearer(token))).status_code == 204
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200
    assert (await client.get("/users/me", headers=bearer(third))).status_code == 401


async def test_a_passkey_login_spends_the_address_login_budget(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_rate_limit=3)):
        await client.register("marko")
        token = (await client.login("marko")).json()["token"]  # one of the three
        key = SoftAuthenticator()
        assert (await add_passkey(client, token, key))["status"] == 201
        assert (await passkey_login(client, key)).status_code == 200
        assert (await passkey_login(client, key)).status_code == 200
        refused = await passkey_login(client, key)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


async def test_a_passkey_login_needs_no_second_factor(client: Client) -> None:
    """With TOTP on, a password alone stops at the second factor; a passkey goes straight in."""
    import pyotp

    token = await client.token_for("marko")
    key = SoftAuthenticator()
    assert (await add_passkey(client, token, key))["status"] == 201
    secret = (await client.post("/users/me/totp", json={"password": "password123"}, headers=bearer(token))).json()
    confirmed = await client.post("/users/me/totp/confirm", json={"code": pyotp.TOTP(secret["secret"]).now()},
                                  headers=bearer(token))
    assert confirmed.status_code == 200
    assert (await client.login("marko")).status_code == 403
    assert (await passkey_login(client, key)).status_code == 200


def test_the_authenticator_is_what_the_server_expects() -> None:
    """The software authenticator's answer parses as WebAuthn JSON (a broken helper would make
    every refusal above pass for the wrong reason)."""
    from webauthn.helpers import parse_registration_credential_json

    key = SoftAuthenticator()
    credential = key.create({"challenge": b64url(b"c" * 32), "user": {"id": b64url(b"u")}, "rp": {"id": "localhost"}})
    parsed = parse_registration_credential_json(copy.deepcopy(credential))
    assert parsed.id == key.id


def test_the_transports_spelt_out_are_webauthn_s() -> None:
    """factors.TRANSPORTS avoids importing webauthn at start-up (memory): it must stay the library's list."""
    from webauthn.helpers.structs import AuthenticatorTransport

    import factors

    assert factors.TRANSPORTS == {t.value for t in AuthenticatorTransport}
