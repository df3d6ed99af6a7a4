"""No stranger can keep a real user out (trust.py, accounts.py), through HTTP on both stores:
known devices, proof of work past an account's limit and past the bound on new visitors, failures
counted only once a password was checked, the catalogue without a token, and the smaller fixes
(keyed failure counters, no-store on account data, malformed cursors and non-UTF-8 bodies)."""

import asyncio
import base64
import json
from pathlib import Path

import pg_support
import pytest
from test_abuse import from_address, retry_after

from conftest import Client, bearer, make_settings, running

pytestmark = pytest.mark.anyio

ACCOUNT_CHALLENGE = ("Too many failed logins for this account; solve a challenge (GET /challenge) and send its "
                     "solution as `altcha`")


async def fail_from_many_addresses(client: Client, username: str, addresses: int, prefix: str = "10.9") -> None:
    for i in range(addresses):
        async with from_address(client, f"{prefix}.{i // 250}.{i % 250}") as guesser:
            assert (await guesser.login(username, "wrong-pass")).status_code in (401, 429)


async def test_a_login_answers_a_device_token(client: Client) -> None:
    await client.register("marko", "marko123")
    first = (await client.login("marko", "marko123")).json()
    assert first["device_token"].startswith("dt1.") and len(first["device_token"]) > 40
    again = (await client.login("marko", "marko123", device_token=first["device_token"])).json()
    assert again["device_token"] == first["device_token"]  # a trusted login keeps its device token
    other = (await client.login("marko", "marko123")).json()
    assert other["device_token"] != first["device_token"]  # a login without one gets a new one


async def test_the_owner_with_a_device_token_logs_in_while_51_addresses_have_failed(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_rate_limit=30)):  # the default per-address budget
        await client.register("owner3", "owner3-pass")
        device = (await client.login("owner3", "owner3-pass")).json()["device_token"]
        await fail_from_many_addresses(client, "owner3", 51)
        untrusted = await client.login("owner3", "owner3-pass")
        assert untrusted.status_code == 429 and untrusted.json() == {"detail": ACCOUNT_CHALLENGE,
                                                                     "challenge_required": True}
        assert 1 <= retry_after(untrusted) <= 900
        trusted = await client.login("owner3", "owner3-pass", device_token=device)
        assert trusted.status_code == 200, trusted.text
        for _ in range(40):  # past this address's budget of 30 a minute too: trusted is never refused by it
            assert (await client.login("owner3", "owner3-pass", device_token=device)).status_code == 200
        assert (await client.login("owner3", "owner3-pass")).status_code == 429  # the untrusted still are


async def test_the_owner_on_a_new_device_solves_a_challenge_and_gets_in(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures_per_account=5)):
        await client.register("marko", "marko123")
        await fail_from_many_addresses(client, "marko", 5)
        asked = await client.login("marko", "marko123")
        assert asked.status_code == 429 and asked.json()["challenge_required"] is True
        solved = await client.login("marko", "marko123", altcha=await client.solve_challenge())
        assert solved.status_code == 200 and solved.json()["device_token"]
        wrong = await client.login("marko", "wrong-pass", altcha=await client.solve_challenge())
        assert wrong.status_code == 401  # admitted and counted as usual


async def test_a_replayed_or_forged_solution_is_refused(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures_per_account=3)):
        await client.register("marko", "marko123")
        await fail_from_many_addresses(client, "marko", 3)
        solution = await client.solve_challenge()
        assert (await client.login("marko", "wrong-pass", altcha=solution)).status_code == 401
        replayed = await client.login("marko", "marko123", altcha=solution)
        assert replayed.status_code == 429 and replayed.json()["challenge_required"] is True
        assert "already used" in replayed.json()["detail"]
        payload = json.loads(base64.b64decode(await client.solve_challenge()))
        forgeries = [
            {**payload, "number": payload["number"] + 1},  # does not solve it
            {**payload, "signature": "0" * 64},  # not signed by us
            {**payload, "algorithm": "SHA-1"},
            {**payload, "salt": payload["salt"].replace("expires=", "expires=9")},  # a later expiry
        ]
        for forged in forgeries:
            altcha = base64.b64encode(json.dumps(forged).encode()).decode()
            assert (await client.login("marko", "marko123", altcha=altcha)).status_code == 429
        for garbage in ("not base64!", base64.b64encode(b"[1, 2]").decode(), base64.b64encode(b'{"number": "1"}').decode()):
            assert (await client.login("marko", "marko123", altcha=garbage)).status_code == 429
        assert (await client.login("marko", "marko123", altcha="x" * 3000)).status_code == 422


async def test_an_expired_challenge_is_refused(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures_per_account=1, challenge_expire_seconds=1)):
        await client.register("marko", "marko123")
        await fail_from_many_addresses(client, "marko", 1)
        solution = await client.solve_challenge()
        await asyncio.sleep(2.1)
        assert (await client.login("marko", "marko123", altcha=solution)).status_code == 429


async def test_a_stolen_device_token_stops_being_trusted_after_max_failures(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=3, login_max_failures_per_account=5)):
        await client.register("marko", "marko123")
        device = (await client.login("marko", "marko123")).json()["device_token"]
        async with from_address(client, "203.0.113.66") as thief:
            for _ in range(3):
                assert (await thief.login("marko", "wrong-pass", device_token=device)).status_code == 401
            # no longer trusted: now this address's own limit and the account's count apply
            for _ in range(3):
                assert (await thief.login("marko", "wrong-pass", device_token=device)).status_code == 401
            assert (await thief.login("marko", "marko123", device_token=device)).status_code == 429
        # the owner's own device (that same token) is untrusted too until its failures age out
        assert (await client.login("marko", "marko123", device_token=device)).status_code == 200


async def test_a_device_token_of_another_account_or_malformed_is_simply_untrusted(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures_per_account=2)):
        await client.register("marko", "marko123")
        await client.register("ivana", "ivana123")
        ivanas = (await client.login("ivana", "ivana123")).json()["device_token"]
        await fail_from_many_addresses(client, "marko", 2)
        for token in (ivanas, "dt1.abc.def", "garbage", ivanas[:-2] + "AA"):
            answer = await client.login("marko", "marko123", device_token=token)
            assert answer.status_code == 429 and answer.json()["challenge_required"] is True
        assert (await client.login("ivana", "ivana123", device_token=ivanas)).status_code == 200


@pytest.mark.parametrize("how", ["password change", "logout-all", "delete"])
async def test_device_tokens_are_revoked_with_the_account_s_sessions(tmp_path: Path, how: str) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures_per_account=2)):
        await client.register("marko", "marko123")
        first = (await client.login("marko", "marko123")).json()
        device, token = first["device_token"], first["token"]
        if how == "password change":
            changed = await client.post("/users/me/password", headers=bearer(token),
                                        json={"current_password": "marko123", "new_password": "marko456"})
            assert changed.status_code == 204
            password = "marko456"
        elif how == "logout-all":
            assert (await client.post("/users/logout-all", headers=bearer(token))).status_code == 204
            password = "marko123"
        else:
            gone = await client.request("DELETE", "/users/me", headers=bearer(token), json={"password": "marko123"})
            assert gone.status_code == 204
            assert (await client.register("marko", "marko123")).status_code == 201  # the name again
            password = "marko123"
        await fail_from_many_addresses(client, "marko", 2)
        revoked = await client.login("marko", password, device_token=device)
        assert revoked.status_code == 429 and revoked.json()["challenge_required"] is True
        fresh = await client.login("marko", password, altcha=await client.solve_challenge())
        assert fresh.status_code == 200 and fresh.json()["device_token"] != device


async def test_failures_count_only_when_a_password_was_checked(tmp_path: Path) -> None:
    """Logins shed by the hashing queue's bound were never checked: they count nothing, so the
    owner on the same address is not locked out by them."""
    settings = make_settings(tmp_path, bcrypt_rounds=10, hash_queue_max_wait_seconds=0.05, login_max_failures=3,
                             login_max_failures_per_account=3)
    async for client in running(settings):
        await client.register("marko", "marko123")
        answers = await asyncio.gather(*(client.login("marko", "wrong-pass") for _ in range(30)))
        codes = [r.status_code for r in answers]
        shed = [r for r in answers if r.status_code == 503]
        assert shed and all(r.json()["challenge_required"] is True and retry_after(r) >= 1 for r in shed)
        assert codes.count(401) <= 3 and set(codes) <= {401, 429, 503}, codes
        await asyncio.sleep(0.5)  # the queue drains
        checked = codes.count(401)
        answer = await client.login("marko", "marko123")
        assert (answer.status_code == 200) == (checked < 3), (checked, answer.text)


async def test_unknown_names_are_refused_alike_with_keyed_counters(tmp_path: Path, backend: str) -> None:
    """The name of a failed login is kept only as a keyed digest: a password typed into the name
    field is nowhere in the store."""
    settings = make_settings(tmp_path, login_max_failures_per_account=2)
    typed = "Hunter2-secret-Pw"
    async for client in running(settings):
        await client.register("marko", "marko123")
        answers = {}
        for name in ("marko", typed):
            await fail_from_many_addresses(client, name, 2)
            answers[name] = await client.login(name, "wrong-pass")
        assert answers["marko"].status_code == answers[typed].status_code == 429
        assert answers["marko"].json() == answers[typed].json()
        if backend == "postgres":
            dump = pg_support.psql("SELECT key FROM login_failures", settings.database_url.get_secret_value())
        else:
            dump = "".join(p.read_bytes().decode("utf-8", "replace") for p in tmp_path.glob("*users.json*") if p.is_file())
        assert "account:" in dump and typed.casefold() not in dump.casefold()


async def test_the_new_visitor_bound_admits_a_solver(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, anonymous_login_rate_limit=0, anonymous_login_global_limit=2)
    async for client in running(settings):
        for i in range(2):
            async with from_address(client, f"198.51.100.{i}") as visitor:
                assert (await visitor.post("/anonymous-login")).status_code == 200
        refused = await client.post("/anonymous-login")
        assert refused.status_code == 429 and refused.json()["challenge_required"] is True
        solution = await client.solve_challenge()
        admitted = await client.post("/anonymous-login", json={"altcha": solution})
        assert admitted.status_code == 200
        cart = await client.put("/cart/items/1", json={"quantity": 2}, headers=bearer(admitted.json()["access_token"]))
        assert cart.status_code == 200
        replay = await client.post("/anonymous-login", json={"altcha": solution})
        assert replay.status_code == 429 and "already used" in replay.json()["detail"]


async def test_the_per_address_visitor_limit_stays_for_solvers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, anonymous_login_rate_limit=1, anonymous_login_global_limit=1)
    async for client in running(settings):
        assert (await client.post("/anonymous-login")).status_code == 200
        over = await client.post("/anonymous-login", json={"altcha": await client.solve_challenge()})
        assert over.status_code == 429 and "challenge_required" not in over.json()


async def test_the_catalogue_needs_no_token(client: Client) -> None:
    plain = await client.get("/items/")
    assert plain.status_code == 200
    body = plain.json()
    assert len(body["items"]) == 16 and body["recently_viewed"] == [] and body["recommended"] == []
    assert (await client.get("/items/", headers=bearer("not-a-token"))).status_code == 401
    assert (await client.get("/items/1")).status_code == 401  # a view is kept on the server: a token is needed
    assert (await client.get("/cart")).status_code == 401


async def test_account_data_is_never_cached(client: Client) -> None:
    token = await client.token_for("marko")
    for path in ("/users/me", "/users/me/data", "/cart", "/users/list"):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 200 and "no-store" in response.headers["cache-control"], path
    assert "no-store" in (await client.get("/challenge")).headers["cache-control"]


async def test_a_cursor_with_a_nul_or_control_character_is_a_422(client: Client) -> None:
    token = await client.token_for("marko")
    for raw in (b"\0", b"ab\0cd", b"\x07", b"\xff\xfe"):
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        response = await client.get("/users/list", params={"cursor": cursor}, headers=bearer(token))
        assert response.status_code == 422, (raw, response.text)


async def test_a_body_that_is_not_utf8_is_a_422(client: Client) -> None:
    body = '{"username": "marko", "password": "marko123"}'
    for encoded in (body.encode("utf-16"), body.encode("utf-16-le"), body.encode("utf-16-be"), body.encode("utf-32")):
        response = await client.post("/users/register", content=encoded, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (encoded[:4], response.text)
        assert "UTF-8" in response.text


async def test_openapi_declares_the_trust_answers(client: Client) -> None:
    spec = (await client.get("/openapi.json")).json()
    login = spec["paths"]["/users/login"]["post"]
    assert {"429", "503"} <= set(login["responses"])
    refusal = login["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "challenge_required" in spec["components"]["schemas"][refusal]["properties"]
    assert "device_token" in spec["components"]["schemas"]["LoginRequest"]["properties"]
    assert "device_token" in spec["components"]["schemas"]["LoginOut"]["required"]
    assert "429" in spec["paths"]["/anonymous-login"]["post"]["responses"]
    assert spec["paths"]["/challenge"]["get"]["responses"]["200"]
