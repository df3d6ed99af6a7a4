"""The ``Store`` protocol's contract (store/protocol.py), checked on both backends through the
protocol alone: no backend's tables, files or private attributes. A third backend that passes
this file keeps the promises routes and flows rely on."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import fields, replace

import pytest

from settings import Settings
from store import (
    USER_FIELDS,
    Attempt,
    AuditEvent,
    ChallengeRequired,
    Device,
    Lockout,
    Passkey,
    RateLimited,
    Store,
    UnknownOwner,
    User,
    UsernameTaken,
    build_store,
    public_profile,
)

pytestmark = pytest.mark.anyio
RULES = Lockout(max_failures=2, max_failures_per_account=3, window=60)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    opened = build_store(settings)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def second(settings: Settings, store: Store) -> AsyncIterator[Store]:
    """Another process's view of the same store (another worker, or another host)."""
    other = build_store(settings)
    await other.open()
    yield other
    await other.close()


async def eventually(check, seconds: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL's other hosts hear a change by NOTIFY, milliseconds after its commit."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "the change never became visible"
        await asyncio.sleep(0.02)


# -- accounts ------------------------------------------------------------------------------------


async def test_accounts_one_per_name_and_per_lookalike(store: Store) -> None:
    marko = await store.add_user("Marko", "hash-1")
    assert await store.get_user(marko.id) == marko == await store.find_user("marko")
    for taken in ("MARKO", "marko", "ｍａｒｋｏ"):
        with pytest.raises(UsernameTaken):
            await store.add_user(taken, "hash-2")
    await store.add_user("paypal", "hash-3")
    with pytest.raises(UsernameTaken):
        await store.add_user("paypaI", "hash-4")  # capital i: looks like l
    assert (await store.find_lookalike("paypaI")).username == "paypal"  # type: ignore[union-attr]
    assert await store.find_lookalike("someone") is None
    names = [u.username for u in await store.list_users(10)]
    assert names == ["Marko", "paypal"]
    assert [u.username for u in await store.list_users(10, after="marko")] == ["paypal"]


async def test_one_winner_among_concurrent_registrations(store: Store, second: Store) -> None:
    results = await asyncio.gather(*(s.add_user("ivana", f"h{i}") for i, s in enumerate([store, second] * 4)),
                                   return_exceptions=True)
    assert sum(isinstance(r, User) for r in results) == 1
    assert all(isinstance(r, User | UsernameTaken) for r in results)


async def test_update_user_is_the_one_way_to_change_an_account(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "old-hash")
    assert await second.get_user(user.id) == user  # cached on the other host now
    updated = await store.update_user(user.id, password="new-hash")
    assert updated == replace(user, password="new-hash") and user.created_at is not None

    async def seen() -> bool:
        return await second.get_user(user.id) == updated

    await eventually(seen)
    for bad in ({"id": "x"}, {"username": "other"}, {"no_such_field": 1}, {}):
        with pytest.raises(ValueError):
            await store.update_user(user.id, **bad)
    assert await store.update_user("no-such-id", password="x") is None


async def test_the_profile_is_every_attribute_but_the_secret_ones(store: Store) -> None:
    user = await store.add_user("marko", "secret-hash")
    profile = (await store.export_user(user.id))["profile"]  # type: ignore[index]
    assert profile == public_profile(user) and "password" not in profile
    secret = {f.name for f in fields(User) if f.metadata.get("secret")}
    assert {"password", "totp_secret"} <= secret and not secret & set(profile)
    assert set(profile) == {f.name for f in fields(User)} - secret and set(USER_FIELDS) > set(profile)


async def test_deleting_an_account_ends_all_it_owns(store: Store) -> None:
    user = await store.add_user("marko", "h")
    session = await store.complete_login(user, Attempt(time.time(), "k", "10.0.0.1"), "jti", time.time() + 60,
                                         new_device=Device("device-1", time.time() + 60))
    await store.set_cart_item(user.id, 1, 2)
    assert await store.delete_user(user.id) is True
    assert await store.get_user(user.id) is None and await store.session_user(session, user.id) is None
    assert await store.export_user(user.id) is None
    with pytest.raises(UnknownOwner):
        await store.set_cart_item(user.id, 1, 1)
    assert await store.delete_user(user.id) is False
    assert (await store.add_user("marko", "h")).id != user.id  # the name is free again
    attempt = await store.begin_login("k", "10.0.0.1", RULES, user_id=user.id, device="device-1")
    assert attempt.device is None  # its device token went with it


# -- sessions ------------------------------------------------------------------------------------


async def test_a_session_rotates_by_compare_and_set(store: Store) -> None:
    user = await store.add_user("marko", "h")
    sid = await store.complete_login(user, Attempt(time.time(), "k", "10.0.0.1"), "j1", time.time() + 60)
    assert await store.session_user(sid, user.id) == replace(user, last_login_at=(await store.get_user(user.id)).last_login_at)  # type: ignore[union-attr]
    assert await store.session_user(sid, "someone-else") is None
    rotated = await store.rotate_session(sid, user.id, "j1", "j2", time.time() + 60, grace=10)
    assert rotated is not None and rotated.jti == "j2"
    again = await store.rotate_session(sid, user.id, "j1", "j3", time.time() + 60, grace=10)
    assert again is not None and again.jti == "j2"  # within the grace: the current one
    assert await store.rotate_session(sid, user.id, "j0", "j4", time.time() + 60) is None  # reuse: ended
    assert await store.session_user(sid, user.id) is None


async def test_ending_sessions_is_seen_by_every_host(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "h")
    one, two = [await store.complete_login(user, Attempt(time.time(), "k", "a"), f"j{i}", time.time() + 60)
                for i in range(2)]
    user = await store.get_user(user.id)  # type: ignore[assignment]  # with its last_login_at
    assert await second.session_user(one, user.id) == user  # cached there
    await store.end_session(one)

    async def ended() -> bool:
        return await second.session_user(one, user.id) is None

    await eventually(ended)
    assert await second.session_user(two, user.id) == user
    await store.end_all_sessions(user.id)

    async def all_ended() -> bool:
        return await second.session_user(two, user.id) is None

    await eventually(all_ended)


# -- throttling ----------------------------------------------------------------------------------


async def test_failures_per_pair_and_per_name(store: Store) -> None:
    for _ in range(2):
        await store.begin_login("name", "10.0.0.1", RULES)
    with pytest.raises(RateLimited) as locked:
        await store.begin_login("name", "10.0.0.1", RULES)
    assert not isinstance(locked.value, ChallengeRequired) and 1 <= locked.value.retry_after <= 60
    await store.begin_login("name", "10.0.0.2", RULES)  # the name's third failure, from elsewhere
    with pytest.raises(ChallengeRequired):
        await store.begin_login("name", "10.0.0.3", RULES)
    proven = await store.begin_login("name", "10.0.0.3", RULES, proven=True)
    assert proven.device is None
    await store.begin_login("other-name", "10.0.0.1", RULES)  # names count apart


async def test_an_attempt_given_back_counts_nothing(store: Store) -> None:
    for _ in range(5):
        attempt = await store.begin_login("name", "10.0.0.1", RULES)
        await store.give_back(attempt)
    await store.begin_login("name", "10.0.0.1", RULES)


async def test_a_success_forgets_this_address_only(store: Store) -> None:
    user = await store.add_user("marko", "h")
    await store.begin_login("name", "10.0.0.2", RULES)
    await store.begin_login("name", "10.0.0.1", RULES)
    attempt = await store.begin_login("name", "10.0.0.1", RULES)
    await store.complete_login(user, attempt, "j", time.time() + 60)
    await store.begin_login("name", "10.0.0.1", RULES)  # its pair forgotten...
    with pytest.raises(ChallengeRequired):  # ...but 10.0.0.2's failure and its own still count
        await store.begin_login("name", "10.0.0.3", RULES)


async def test_a_device_token_is_trusted_until_its_own_failures(store: Store) -> None:
    user = await store.add_user("marko", "h")
    await store.complete_login(user, Attempt(time.time(), "k", "a"), "j", time.time() + 60,
                               new_device=Device("dev", time.time() + 60))
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        with pytest.raises(RateLimited):
            for _ in range(3):
                await store.begin_login("k", client, RULES)
    trusted = [await store.begin_login("k", "10.0.0.1", RULES, user_id=user.id, device="dev") for _ in range(2)]
    assert all(a.device == "dev" for a in trusted)
    with pytest.raises(RateLimited):  # its own two failures: untrusted, and the pair is full
        await store.begin_login("k", "10.0.0.1", RULES, user_id=user.id, device="dev")
    other = await store.add_user("ivana", "h")
    assert (await store.begin_login("k2", "10.0.0.9", RULES, user_id=other.id, device="dev")).device is None
    await store.change_password(user.id, "h2", keep_session=None)  # revokes device tokens
    assert (await store.begin_login("k3", "10.0.0.8", RULES, user_id=user.id, device="dev")).device is None


async def test_a_solution_is_spent_once_on_every_host(store: Store, second: Store) -> None:
    results = await asyncio.gather(*(s.spend_once("altcha:abc", time.time() + 60) for s in (store, second) * 3))
    assert sorted(results) == [False] * 5 + [True]


async def test_request_counts_add_up_over_workers(store: Store, second: Store) -> None:
    expires = time.time() + 60
    assert await store.count_requests({"login:a": (3, expires)}) == {"login:a": 3}
    assert await second.count_requests({"login:a": (2, expires), "login:b": (0, expires)}) == {"login:a": 5,
                                                                                             "login:b": 0}


# -- visitors and what owners keep ----------------------------------------------------------------


async def test_new_visitors_are_bounded_per_address_and_in_all(store: Store) -> None:
    first = await store.add_anonymous("10.0.0.1", 2, 3)
    assert await store.anonymous_exists(first) and (await store.get_anonymous(first)).id == first  # type: ignore[union-attr]
    await store.add_anonymous("10.0.0.1", 2, 3)
    with pytest.raises(RateLimited) as per_address:
        await store.add_anonymous("10.0.0.1", 2, 3)
    assert not isinstance(per_address.value, ChallengeRequired)
    await store.add_anonymous("10.0.0.2", 2, 3)
    with pytest.raises(ChallengeRequired):
        await store.add_anonymous("10.0.0.3", 2, 3)
    await store.add_anonymous("10.0.0.3", 2, 0)  # a solver: no service-wide bound


async def test_a_visitor_s_data_moves_into_the_account(store: Store) -> None:
    visitor = await store.add_anonymous("10.0.0.1", 0)
    await store.set_cart_item(visitor, 3, 2)
    await store.add_favourite(visitor, 5)
    await store.set_preferences(visitor, {"theme": "dark"})
    await store.record_view(visitor, 7)
    user = await store.add_user("marko", "h", merge_from=visitor)
    assert not await store.anonymous_exists(visitor)
    mine = await store.get_personal(user.id)
    assert mine.cart == {3: 2} and mine.favourites == [5] and mine.preferences == {"theme": "dark"}
    assert [item for item, _ in mine.history] == [7]
    with pytest.raises(UnknownOwner):
        await store.set_cart_item(visitor, 1, 1)


async def test_personal_data_of_an_owner(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "h")
    assert await store.set_cart_item(user.id, 2, 1) == {2: 1}
    assert await store.remove_cart_item(user.id, 2) == {}
    with pytest.raises(KeyError):
        await store.remove_cart_item(user.id, 2)
    assert await store.add_favourite(user.id, 4) == [4] == await store.add_favourite(user.id, 4)
    assert await store.remove_favourite(user.id, 4) == []
    for item in (1, 2, 1):
        await store.record_view(user.id, item)
    assert [i for i, _ in await store.get_history(user.id)] == [1, 2]  # newest first, each once
    await store.flush_views()
    assert [i for i, _ in await second.get_history(user.id)] == [1, 2]  # written: every worker sees it
    await store.clear_history(user.id)
    assert await store.get_history(user.id) == []
    assert await store.set_preferences(user.id, {"sort": "price"}) == {"sort": "price"}
    assert await second.get_preferences(user.id) == {"sort": "price"}


async def test_idle_visitors_are_purged(store: Store) -> None:
    visitor = await store.add_anonymous("10.0.0.1", 0)
    await store.set_cart_item(visitor, 1, 1)
    assert await store.purge_anonymous(3600) == 0
    await asyncio.sleep(0.05)
    assert await store.purge_anonymous(0.01) == 1
    assert not await store.anonymous_exists(visitor)
    assert await store.get_cart(visitor) == {}


# -- issue 20: accounts by prefix, each user's sessions, unlocking, the audit log -------------------


async def test_listing_by_prefix_pages_in_order(store: Store) -> None:
    for name in ("al_x", "alb", "Ala", "alpha", "bob", "a%b", "al"):
        await store.add_user(name, "h")

    async def names(limit: int, after: str | None = None, prefix: str | None = None) -> list[str]:
        return [u.username for u in await store.list_users(limit, after=after, prefix=prefix)]

    assert await names(10, prefix="al") == ["al", "al_x", "Ala", "alb", "alpha"]
    assert await names(10, prefix="al_") == ["al_x"]  # `_` and `%` are letters, not wildcards
    assert await names(10, prefix="a%") == ["a%b"]
    assert await names(2, after="al_x", prefix="al") == ["Ala", "alb"]
    assert await names(10, after="ak", prefix="al") == ["al", "al_x", "Ala", "alb", "alpha"]
    assert await names(10, after="zz", prefix="al") == [] and await names(10, prefix="c") == []


async def test_an_account_s_sessions_are_listed_and_ended_by_their_owner(store: Store, second: Store) -> None:
    user, other = await store.add_user("marko", "h"), await store.add_user("ivana", "h")
    one = await store.complete_login(user, Attempt(time.time(), "k", "10.0.0.1"), "j1", time.time() + 60,
                                     user_agent="Laptop")
    await asyncio.sleep(0.01)
    two = await store.complete_login(user, Attempt(time.time(), "k", "10.0.0.2"), "j2", time.time() + 60)
    theirs = await store.complete_login(other, Attempt(time.time(), "k2", "10.0.0.3"), "j3", time.time() + 60)
    listed = await second.list_sessions(user.id)
    assert [s.id for s in listed] == [two, one]
    assert (listed[1].client, listed[1].user_agent, listed[0].user_agent) == ("10.0.0.1", "Laptop", None)
    assert listed[1].last_used_at == listed[1].created_at
    assert (await store.get_user(user.id)).last_login_at >= listed[0].created_at  # type: ignore[union-attr,operator]
    await asyncio.sleep(0.01)
    assert await store.rotate_session(one, user.id, "j1", "j1b", time.time() + 60, client="10.0.0.9",
                                      user_agent="Phone") is not None
    rotated = next(s for s in await store.list_sessions(user.id) if s.id == one)
    assert rotated.last_used_at > rotated.created_at and (rotated.client, rotated.user_agent) == ("10.0.0.9", "Phone")
    assert await second.session_user(theirs, other.id) is not None
    assert not await store.end_session(theirs, user.id)  # another account's: untouched
    assert await second.session_user(theirs, other.id) is not None
    assert await second.session_user(one, user.id) is not None  # cached there
    assert await store.end_session(one, user.id) and not await store.end_session(one, user.id)

    async def ended() -> bool:
        return await second.session_user(one, user.id) is None

    await eventually(ended)
    assert [s.id for s in await store.list_sessions(user.id)] == [two]


async def test_unlock_forgets_every_failure_of_the_name(store: Store) -> None:
    rules = Lockout(max_failures=2, max_failures_per_account=5, window=60)
    user = await store.add_user("marko", "h")
    await store.complete_login(user, Attempt(time.time(), "k", "a"), "j", time.time() + 60,
                               new_device=Device("dev", time.time() + 60))
    for client in ("10.0.0.1", "10.0.0.2"):
        for _ in range(2):
            await store.begin_login("name", client, rules)
        with pytest.raises(RateLimited):  # the pair is full
            await store.begin_login("name", client, rules)
    await store.begin_login("name", "10.0.0.3", rules)
    with pytest.raises(ChallengeRequired):  # and so is the account
        await store.begin_login("name", "10.0.0.4", rules)
    for _ in range(2):
        await store.begin_login("name", "10.0.0.9", rules, user_id=user.id, device="dev")
    await store.begin_login("other", "10.0.0.1", rules)
    await store.unlock("name", user.id)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.4"):  # pairs and the account's counter forgotten
        await store.begin_login("name", client, rules)
    assert (await store.begin_login("name", "10.0.0.9", rules, user_id=user.id, device="dev")).device == "dev"
    await store.begin_login("other", "10.0.0.1", rules)  # another name's count stays
    with pytest.raises(RateLimited):
        await store.begin_login("other", "10.0.0.1", rules)


def event(at: float, type: str = "login", user_id: str | None = "u1", suffix: str = "00000000") -> AuditEvent:
    return AuditEvent(f"{int(at * 1e6):016x}{suffix}", at, type, user_id, "marko", "10.0.0.1", "UA",
                      {"count": 2, "request_id": "r"})


async def test_the_audit_log_is_read_newest_first_by_every_host(store: Store, second: Store) -> None:
    now = time.time()
    events = [event(now - 3, "register"), event(now - 2, "login_failed"), event(now - 1, "login", suffix="0000000a"),
              event(now - 1, "login", "u2", suffix="0000000b"), event(now - 2 * 86400, "login", suffix="0000000c")]
    await store.record_audit(events[:2])
    await store.record_audit(events[2:])
    await store.record_audit([])
    assert await second.list_audit(10) == sorted(events, key=lambda e: e.id, reverse=True)
    newest = sorted(events, key=lambda e: e.id, reverse=True)
    assert await second.list_audit(2) == newest[:2]
    assert await second.list_audit(2, before=newest[1].id) == newest[2:4]
    assert [e.user_id for e in await second.list_audit(10, user_id="u2")] == ["u2"]
    assert [e.type for e in await second.list_audit(10, type="login_failed")] == ["login_failed"]
    assert await second.list_audit(10, user_id="u1", type="login", before=events[3].id) == [events[2], events[4]]
    assert await second.list_audit(10, user_id="nobody") == []
    assert await store.prune_audit(now - 86400) == 1
    assert len(await second.list_audit(10)) == 4


# -- passkeys and second factors (FactorStore) ------------------------------------------------------


def _passkey(user_id: str, credential_id: str = "cred-1", sign_count: int = 0) -> Passkey:
    return Passkey(uuid.uuid4().hex, user_id, credential_id, b"\x01\x02public", sign_count, "Laptop", time.time(),
                   None, ("internal", "hybrid"))


async def test_a_webauthn_challenge_is_taken_once_on_any_host(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "h")
    await store.put_webauthn_challenge("challenge-1", "register", user.id, time.time() + 60)
    results = await asyncio.gather(*(s.take_webauthn_challenge("challenge-1") for s in (store, second) * 3))
    taken = [r for r in results if r is not None]
    assert len(taken) == 1 and taken[0].purpose == "register" and taken[0].user_id == user.id
    await store.put_webauthn_challenge("challenge-2", "login", None, time.time() - 1)  # expired
    assert await second.take_webauthn_challenge("challenge-2") is None
    assert await store.take_webauthn_challenge("challenge-2") is None
    assert await store.take_webauthn_challenge("never-handed-out") is None


async def test_passkeys_are_unique_and_their_counter_only_goes_forward(store: Store, second: Store) -> None:
    marko = await store.add_user("marko", "h")
    ana = await store.add_user("ana", "h")
    passkey = _passkey(marko.id, sign_count=3)
    assert await store.add_passkey(passkey) is True
    assert await second.find_passkey("cred-1") == passkey
    assert await store.add_passkey(_passkey(ana.id)) is False  # one credential, one account
    assert await store.list_passkeys(marko.id) == [passkey] and await store.list_passkeys(ana.id) == []
    with pytest.raises(UnknownOwner):
        await store.add_passkey(_passkey("no-such-account", "cred-2"))

    assert await store.use_passkey(passkey.id, 3, 100.0) is False  # standing still
    assert await store.use_passkey(passkey.id, 2, 100.0) is False  # going back
    wins = await asyncio.gather(*(s.use_passkey(passkey.id, 4, 100.0) for s in (store, second) * 2))
    assert sum(wins) == 1  # one login per counter value
    used = await second.find_passkey("cred-1")
    assert used is not None and used.sign_count == 4 and used.last_used_at == 100.0
    counterless = _passkey(ana.id, "cred-3")
    await store.add_passkey(counterless)
    assert await store.use_passkey(counterless.id, 0, 1.0) and await store.use_passkey(counterless.id, 0, 2.0)

    assert await store.remove_passkey(ana.id, passkey.id) is False  # another account's
    assert await store.remove_passkey(marko.id, passkey.id) is True
    assert await second.find_passkey("cred-1") is None and await store.remove_passkey(marko.id, passkey.id) is False


async def test_adding_or_removing_a_passkey_ends_the_other_sessions(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "h")

    async def login() -> str:
        return await store.complete_login(user, Attempt(time.time(), "k", "10.0.0.1"), uuid.uuid4().hex,
                                          time.time() + 60)

    mine, other = await login(), await login()
    assert await second.session_user(other, user.id) is not None  # cached on the other host
    passkey = _passkey(user.id)
    await store.add_passkey(passkey, keep_session=mine)

    async def ended() -> bool:
        return await second.session_user(other, user.id) is None

    await eventually(ended)
    assert await second.session_user(mine, user.id) is not None
    third = await login()
    await store.remove_passkey(user.id, passkey.id, keep_session=mine)
    assert await store.session_user(third, user.id) is None and await store.session_user(mine, user.id) is not None
    fourth = await login()
    await store.end_other_sessions(user.id, mine)
    assert await store.session_user(fourth, user.id) is None and await store.session_user(mine, user.id) is not None


async def test_an_mfa_token_counts_attempts_and_ends_once(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "h")
    attempt = Attempt(123.0, "name-key", "10.0.0.1", "device-key")
    await store.add_mfa_token("mfa-1", user.id, attempt, 2, time.time() + 60)
    first = await second.try_mfa_token("mfa-1")
    assert first is not None and first.user_id == user.id and first.attempts_left == 1
    assert first.attempt == Attempt(123.0, "name-key", "", "device-key")  # no address is kept
    assert (await store.try_mfa_token("mfa-1")).attempts_left == 0  # type: ignore[union-attr]
    assert await store.try_mfa_token("mfa-1") is None  # out of attempts
    assert await store.end_mfa_token("mfa-1") is False

    await store.add_mfa_token("mfa-2", user.id, attempt, 5, time.time() + 60)
    assert await store.try_mfa_token("mfa-2") is not None
    ends = await asyncio.gather(*(s.end_mfa_token("mfa-2") for s in (store, second) * 2))
    assert sum(ends) == 1 and await store.try_mfa_token("mfa-2") is None
    await store.add_mfa_token("mfa-3", user.id, attempt, 5, time.time() - 1)
    assert await store.try_mfa_token("mfa-3") is None  # expired


async def test_a_totp_step_and_a_recovery_code_work_once(store: Store, second: Store) -> None:
    user = await store.add_user("marko", "h")
    wins = await asyncio.gather(*(s.use_totp_step(user.id, 1000) for s in (store, second) * 2))
    assert sum(wins) == 1
    assert await store.use_totp_step(user.id, 999) is False and await second.use_totp_step(user.id, 1001) is True
    assert await store.use_totp_step("no-such-account", 5) is False

    await store.set_recovery_codes(user.id, ["h1", "h2", "h3"])
    wins = await asyncio.gather(*(s.use_recovery_code(user.id, "h2") for s in (store, second) * 2))
    assert sum(wins) == 1
    assert await store.use_recovery_code(user.id, "h9") is False
    await store.set_recovery_codes(user.id, ["h4"])  # replaces them
    assert await second.use_recovery_code(user.id, "h1") is False and await second.use_recovery_code(user.id, "h4")
    await store.set_recovery_codes(user.id, ["h5"])
    await store.set_recovery_codes(user.id, [])
    assert await store.use_recovery_code(user.id, "h5") is False
    with pytest.raises(UnknownOwner):
        await store.set_recovery_codes("no-such-account", ["h"])


async def test_totp_state_is_account_fields_and_goes_with_the_account(store: Store) -> None:
    user = await store.add_user("marko", "h")
    assert user.totp_enabled is False and user.totp_secret is None
    updated = await store.update_user(user.id, totp_secret="sealed", totp_enabled=True)
    assert updated is not None and updated.totp_enabled and updated.totp_secret == "sealed"
    profile = (await store.export_user(user.id))["profile"]  # type: ignore[index]
    assert profile["totp_enabled"] is True and "sealed" not in str(profile)
    await store.add_passkey(_passkey(user.id))
    await store.set_recovery_codes(user.id, ["h1"])
    await store.use_totp_step(user.id, 7)
    await store.add_mfa_token("mfa", user.id, Attempt(1.0, "k", ""), 5, time.time() + 60)
    await store.put_webauthn_challenge("c", "register", user.id, time.time() + 60)
    assert await store.delete_user(user.id)
    again = await store.add_user("marko", "h")  # a new account gets none of it
    assert await store.find_passkey("cred-1") is None and await store.list_passkeys(again.id) == []
    assert await store.try_mfa_token("mfa") is None and await store.take_webauthn_challenge("c") is None
    assert await store.use_recovery_code(user.id, "h1") is False
