"""Abuse resistance through HTTP: per-address budgets, lockout by (username, address), the
account's challenge (tests/test_trust.py has the rest of it), client addresses, the global bound on new visitors, paging, the hashing queue's bound
and the refresh grace period. Real-process floods are in test_flood.py."""

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from conftest import Client, assert_account, bearer, make_settings, running

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def from_address(client: Client, host: str) -> AsyncIterator[Client]:
    """Another client of the same running app, seen by it as coming from ``host``."""
    transport = httpx.ASGITransport(app=client.app, client=(host, 50000))  # type: ignore[arg-type]
    async with Client(transport=transport, base_url="http://test") as other:
        other.app = client.app
        yield other


def retry_after(response: httpx.Response) -> int:
    return int(response.headers["retry-after"])


# -- per-address budgets -------------------------------------------------------------------------


async def test_login_budget_per_address(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_rate_limit=3)):
        await client.register("marko", "marko123")
        codes = [(await client.login("marko", "wrong-pass")).status_code for _ in range(3)]
        assert codes == [401, 401, 401]
        over = await client.login("marko", "marko123")  # even the right password: the address is spent
        assert over.status_code == 429 and 1 <= retry_after(over) <= 120
        assert over.json() == {"detail": "Too many login attempts from this address; try again later"}
        async with from_address(client, "127.0.0.2") as other:
            assert (await other.login("marko", "marko123")).status_code == 200


async def test_register_budget_per_address_before_any_write(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, register_rate_limit=2)):
        assert [(await client.register(n)).status_code for n in ("one", "two")] == [201, 201]
        over = await client.register("three")
        assert over.status_code == 429 and 1 <= retry_after(over) <= 7200
        assert over.json() == {"detail": "Too many registrations from this address; try again later"}
        async with from_address(client, "127.0.0.2") as other:
            assert (await other.register("three")).status_code == 201  # the refused one wrote nothing
            token = await other.token_for("three")
        names = [u["username"] for u in (await client.get("/users/list", headers=bearer(token))).json()["users"]]
        assert names == ["one", "three", "two"]


async def test_zero_disables_the_budgets(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_rate_limit=0, register_rate_limit=0,
                                              login_max_failures=0, login_max_failures_per_account=0)):
        assert [(await client.register(f"user{i}")).status_code for i in range(40)] == [201] * 40
        assert [(await client.login("user1", "wrong-pass")).status_code for _ in range(40)] == [401] * 40
        assert (await client.login("user1")).status_code == 200


async def test_asking_again_before_retry_after_gets_the_refusal_no_sooner(tmp_path: Path) -> None:
    """A client that ignores Retry-After waits for its next refusal (at most
    EARLY_RETRY_DELAY_SECONDS): refusing it cannot keep the server busy. The first refusal, other
    addresses, and another kind of refusal are answered at once."""
    async for client in running(make_settings(tmp_path, login_rate_limit=1, register_rate_limit=1,
                                              early_retry_delay_seconds=1)):
        async def timed_login(who: Client) -> tuple[int, float]:
            started = time.monotonic()
            return (await who.login("ghost", "wrong-pass")).status_code, time.monotonic() - started

        assert (await timed_login(client))[0] == 401
        first, at_once = await timed_login(client)
        assert first == 429 and at_once < 0.9
        both = await asyncio.gather(timed_login(client), timed_login(client))  # two early retries
        assert [code for code, _ in both] == [429, 429] and all(0.9 <= took < 5 for _, took in both), both
        async with from_address(client, "127.0.0.2") as other:
            code, took = await timed_login(other)
            assert code == 401 and took < 0.9
        assert (await client.register("first")).status_code == 201
        started = time.monotonic()  # another kind of refusal, from the paced address: at once
        assert (await client.register("second")).status_code == 429 and time.monotonic() - started < 0.9


# -- lockout by (username, address), and per account ---------------------------------------------


async def test_a_stranger_cannot_lock_the_owner_out(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=3, login_lockout_seconds=600)):
        await client.register("marko", "marko123")
        async with from_address(client, "127.0.0.2") as attacker:
            assert [(await attacker.login("marko", "wrong-pass")).status_code for _ in range(3)] == [401] * 3
            locked = await attacker.login("marko", "marko123")
            assert locked.status_code == 429 and 590 <= retry_after(locked) <= 600
            assert (await attacker.login("MARKO", "marko123")).status_code == 429  # same account, other spelling
        assert (await client.login("marko", "marko123")).status_code == 200  # the owner, from 127.0.0.1


async def test_the_window_slides(tmp_path: Path) -> None:
    """A fixed window would forget both failures at once; a sliding one only the older."""
    async for client in running(make_settings(tmp_path, login_max_failures=2, login_lockout_seconds=2)):
        await client.register("marko", "marko123")
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await client.login("marko", "wrong-pass")).status_code == 401
        await asyncio.sleep(1.0)
        assert (await client.login("marko", "wrong-pass")).status_code == 401
        assert (await client.login("marko", "marko123")).status_code == 429
        await asyncio.sleep(max(0.0, start + 2.2 - loop.time()))  # the first failure has aged out
        assert (await client.login("marko", "wrong-pass")).status_code == 401  # the second still counts...
        assert (await client.login("marko", "marko123")).status_code == 429  # ...so this makes two again


async def test_distributed_guessing_asks_for_a_challenge_and_never_locks_for_good(tmp_path: Path) -> None:
    """Past the account's limit from all addresses, an untrusted login is asked for proof of work
    (the per-account lock for every address is gone: it let strangers keep the owner out); once
    the failures age out of the window, it is not asked any more."""
    settings = make_settings(tmp_path, login_max_failures=100, login_max_failures_per_account=4,
                             login_lockout_seconds=1)
    async for client in running(settings):
        await client.register("marko", "marko123")
        for i in range(4):
            async with from_address(client, f"127.0.1.{i}") as guesser:
                assert (await guesser.login("marko", "wrong-pass")).status_code == 401
        owner = await client.login("marko", "marko123")  # the owner's address never failed
        assert owner.status_code == 429 and owner.json()["challenge_required"] is True and retry_after(owner) == 1
        assert (await client.login("ghost", "wrong-pass")).status_code == 401  # only the guessed account
        await asyncio.sleep(1.1)
        assert (await client.login("marko", "marko123")).status_code == 200


async def test_the_account_lock_answers_the_same_for_unknown_usernames(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=100, login_max_failures_per_account=3)
    async for client in running(settings):
        await client.register("marko", "marko123")
        answers = {}
        for name in ("marko", "ghost"):
            for i in range(3):
                async with from_address(client, f"127.0.2.{i}") as guesser:
                    assert (await guesser.login(name, "wrong-pass")).status_code == 401
            answers[name] = await client.login(name, "wrong-pass")
        assert answers["marko"].status_code == answers["ghost"].status_code == 429
        assert answers["marko"].json() == answers["ghost"].json()
        assert retry_after(answers["marko"]) == retry_after(answers["ghost"])


async def test_a_success_does_not_erase_failures_from_other_addresses(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=100, login_max_failures_per_account=3)
    async for client in running(settings):
        await client.register("marko", "marko123")
        for i in range(2):
            async with from_address(client, f"127.0.3.{i}") as guesser:
                assert (await guesser.login("marko", "wrong-pass")).status_code == 401
        assert (await client.login("marko", "marko123")).status_code == 200
        async with from_address(client, "127.0.3.9") as guesser:
            assert (await guesser.login("marko", "wrong-pass")).status_code == 401  # the third: locked now
        assert (await client.login("marko", "marko123")).status_code == 429


# -- client addresses ----------------------------------------------------------------------------


async def test_addresses_that_are_not_ip_addresses_share_one_bucket(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_rate_limit=3)):
        for host in ("not-an-ip", "unknown", "999.1.1.1"):
            async with from_address(client, host) as forged:
                assert (await forged.login("ghost", "wrong-pass")).status_code == 401
        async with from_address(client, "also-not-an-ip") as forged:
            assert (await forged.login("ghost", "wrong-pass")).status_code == 429
        async with from_address(client, "192.0.2.7") as real:
            assert (await real.login("ghost", "wrong-pass")).status_code == 401


async def test_ipv6_clients_count_per_64_block(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_rate_limit=2)):
        for host in ("2001:db8::1", "2001:db8::ffff:2"):
            async with from_address(client, host) as same_block:
                assert (await same_block.login("ghost", "wrong-pass")).status_code == 401
        async with from_address(client, "2001:db8::3") as same_block:
            assert (await same_block.login("ghost", "wrong-pass")).status_code == 429
        async with from_address(client, "2001:db8:0:1::1") as other_block:
            assert (await other_block.login("ghost", "wrong-pass")).status_code == 401
        async with from_address(client, "::ffff:192.0.2.8") as mapped:  # an IPv4 client on a dual stack
            assert (await mapped.login("ghost", "wrong-pass")).status_code == 401


async def test_global_bound_on_new_visitors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, anonymous_login_rate_limit=0, anonymous_login_global_limit=3)
    async for client in running(settings):
        for i in range(3):
            async with from_address(client, f"198.51.100.{i}") as visitor:
                assert (await visitor.post("/anonymous-login")).status_code == 200
        async with from_address(client, "198.51.100.99") as visitor:
            refused = await visitor.post("/anonymous-login")
        assert refused.status_code == 429 and 3500 <= retry_after(refused) <= 3600
        assert (await client.post("/anonymous-login")).status_code == 429


# -- paging /users/list --------------------------------------------------------------------------


async def test_paging_through_1000_users_has_no_repeat_or_gap(tmp_path: Path) -> None:
    # 100 registrations at once from one address: the hashing queue's bound would rightly shed some
    # on a loaded machine (its own tests are below); here every one must be served.
    async for client in running(make_settings(tmp_path, hash_queue_max_wait_seconds=0)):
        rng = random.Random(3)
        names = [f"{rng.choice('aAbBzZ')}u{i:04d}" for i in range(999)]
        for start in range(0, len(names), 100):
            batch = await asyncio.gather(*(client.register(n) for n in names[start:start + 100]))
            assert [r.status_code for r in batch] == [201] * len(batch), [r.text for r in batch if r.status_code != 201]
        token = await client.token_for("checker")  # the 1000th
        for limit in (100, 37):
            seen: list[str] = []
            cursor = None
            while True:
                params: dict[str, str | int] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
                page = (await client.get("/users/list", params=params, headers=bearer(token))).json()
                assert 1 <= len(page["users"]) <= limit
                seen += [u["username"] for u in page["users"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == sorted([*names, "checker"], key=str.casefold)
        first = (await client.get("/users/list", headers=bearer(token))).json()
        assert len(first["users"]) == 50 and first["next_cursor"]


async def test_paging_parameters_are_validated(client: Client) -> None:
    token = await client.token_for("marko")
    bad_cursors = ["!!!", "A", base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="), "x" * 201, ""]
    for params in [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, *({"cursor": c} for c in bad_cursors)]:
        response = await client.get("/users/list", params=params, headers=bearer(token))
        assert response.status_code == 422, params
        assert isinstance(response.json()["detail"], list)
    page = (await client.get("/users/list", params={"limit": 1}, headers=bearer(token))).json()
    assert set(page) == {"users", "next_cursor"} and page["next_cursor"] is None and len(page["users"]) == 1
    assert_account(page["users"][0], "marko")


# -- the hashing queue's bound -------------------------------------------------------------------


async def test_logins_over_the_hashing_queue_bound_get_503_at_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, bcrypt_rounds=10, hash_queue_max_wait_seconds=0.1, login_max_failures=0)
    async for client in running(settings):
        await client.register("marko", "marko123")
        answers = await asyncio.gather(*(client.login(f"guess{i}", "wrong-pass") for i in range(30)))
        busy = [r for r in answers if r.status_code == 503]
        assert busy and all(r.status_code == 401 for r in answers if r not in busy)
        assert all(retry_after(r) >= 1 and r.json() == {
            "detail": "Too many logins in progress; solve a challenge (GET /challenge) and send its solution as "
                      "`altcha`, or try again shortly", "challenge_required": True,
            "request_id": r.headers["x-request-id"]} for r in busy)
        assert (await client.login("marko", "marko123")).status_code == 200  # once the queue has drained


# -- concurrent refresh --------------------------------------------------------------------------


async def test_a_refresh_racing_another_within_the_grace_gets_the_current_pair(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, refresh_reuse_grace_seconds=1)):
        first = await client.session_for("marko")
        tab_a, tab_b = await asyncio.gather(
            *(client.post("/users/refresh", json={"refresh_token": first["refresh_token"]}) for _ in range(2)))
        assert tab_a.status_code == tab_b.status_code == 200
        for tab in (tab_a, tab_b):
            assert (await client.get("/users/me", headers=bearer(tab.json()["token"]))).status_code == 200
        # Both tabs hold the session's current refresh token: either may refresh next.
        nxt = await client.post("/users/refresh", json={"refresh_token": tab_b.json()["refresh_token"]})
        assert nxt.status_code == 200
        await asyncio.sleep(1.1)  # past the grace: the first token is stolen, the session ends
        assert (await client.post("/users/refresh", json={"refresh_token": first["refresh_token"]})).status_code == 401
        assert (await client.get("/users/me", headers=bearer(nxt.json()["token"]))).status_code == 401
        assert (await client.post("/users/refresh",
                                  json={"refresh_token": nxt.json()["refresh_token"]})).status_code == 401


async def test_an_older_token_than_the_last_one_revokes_even_within_the_grace(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, refresh_reuse_grace_seconds=60)):
        first = await client.session_for("marko")
        second = (await client.post("/users/refresh", json={"refresh_token": first["refresh_token"]})).json()
        third = (await client.post("/users/refresh", json={"refresh_token": second["refresh_token"]})).json()
        assert (await client.post("/users/refresh", json={"refresh_token": first["refresh_token"]})).status_code == 401
        assert (await client.get("/users/me", headers=bearer(third["token"]))).status_code == 401


async def test_openapi_declares_the_new_answers(client: Client) -> None:
    operations = {(method.upper(), path): op for path, ops in (await client.get("/openapi.json")).json()["paths"].items()
                  for method, op in ops.items()}
    assert all("431" in op["responses"] for op in operations.values())
    for route in (("POST", "/users/login"), ("POST", "/users/register")):
        assert {"429", "503"} <= set(operations[route]["responses"])
    assert "429" in operations[("POST", "/anonymous-login")]["responses"]
    assert "422" in operations[("GET", "/users/list")]["responses"]
