"""The account flows that sequence throttling, hashing and the store: register, log in, and
re-authenticate (to change the password or delete the account).

Each check runs where it costs least, cheapest first, so a refused request costs next to nothing:
the client address's budget (memory), then the hashing queue's bound (memory), then the
lockout (a store transaction), and only then a bcrypt hash. The routes in ``routers/users.py``
stay a few lines each and map these functions' answers to HTTP.
"""

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import HTTPException, status

from admission import ClientGone, Overloaded, Watch
from authentication import AuthHandler
from deps import Identity, service_unavailable, too_many_requests
from ratelimit import RateLimiter
from settings import Settings
from store import Lockout, RateLimited, Store, UnknownOwner, User, UsernameTaken

T = TypeVar("T")
INVALID_LOGIN = "Invalid username and/or password"
LOCKED_OUT = "Too many failed login attempts; try again later"
BUSY = "Too many logins and registrations in progress; try again shortly"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as throttling needs to know."""

    client: str  # normalised address (deps.client_address)
    watch: Watch | None = None  # returns once the client has gone (deps.disconnect_watch)
    anonymous: str | None = None  # the visitor whose data moves into the account


@dataclass(frozen=True, slots=True)
class LoggedIn:
    user: User
    session_id: str
    refresh_jti: str


def lockout_rules(settings: Settings) -> Lockout:
    return Lockout(settings.login_max_failures, settings.login_max_failures_per_account,
                   settings.login_lockout_seconds)


def _budget(limiter: RateLimiter, kind: str, caller: Caller, detail: str) -> None:
    try:
        limiter.hit(kind, caller.client)
    except RateLimited as exc:
        raise too_many_requests(detail, exc.retry_after) from None


async def _hashing(job: Callable[[], Awaitable[T]]) -> T:
    """Run a password job; a refused one is a 503 with ``Retry-After``."""
    try:
        return await job()
    except Overloaded as exc:
        raise service_unavailable(BUSY, exc.retry_after) from None
    except ClientGone:  # nobody reads this answer; it only ends the request (not paced: no Retry-After)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Client disconnected") from None


async def _begin(username: str, caller: Caller, store: Store, auth: AuthHandler, settings: Settings) -> float:
    """Admission to hashing, then the lockout's count (``store.begin_login``): 503 or 429."""
    try:
        auth.hashing.admit(caller.client)  # before the lockout's store write: a 503 costs nothing
    except Overloaded as exc:
        raise service_unavailable(BUSY, exc.retry_after) from None
    try:
        return await store.begin_login(username, caller.client, lockout_rules(settings))
    except RateLimited as exc:
        raise too_many_requests(LOCKED_OUT, exc.retry_after) from None


async def register(username: str, password: str, caller: Caller, store: Store, auth: AuthHandler,
                   limiter: RateLimiter) -> User:
    """Create an account (a visitor's data moves in). 429 over the address's budget, 409 for a
    taken name or one that looks like an account's (checked before hashing, to save one, and again
    by the store), 503 when busy."""
    _budget(limiter, "register", caller, "Too many registrations from this address; try again later")
    if await store.find_lookalike(username):
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken")
    hashed = await _hashing(lambda: auth.get_password_hash(password, caller.client, caller.watch))
    try:
        return await store.add_user(username, hashed, merge_from=caller.anonymous)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken") from None


async def login(username: str, password: str, caller: Caller, store: Store, auth: AuthHandler,
                limiter: RateLimiter, settings: Settings) -> LoggedIn:
    """Check the password and start a login session. 429 over the address's budget or while
    locked out, 503 when the hashing queue is full, 401 for a wrong or unknown name or password
    (same answer, same time)."""
    _budget(limiter, "login", caller, "Too many login attempts from this address; try again later")
    attempt = await _begin(username, caller, store, auth, settings)
    user = await store.find_user(username)
    verified, rehash = await _hashing(lambda: auth.check_password(  # always hashes
        password, user.password if user else None, caller.client, caller.watch))
    if user is None or not verified:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN)
    if rehash:  # BCRYPT_ROUNDS changed, or a hash of the un-normalised password: one cost, one form
        try:
            await store.set_password(user.id, await auth.get_password_hash(password, caller.client))
        except (Overloaded, ClientGone):
            pass  # the next login rehashes
    jti = uuid.uuid4().hex
    try:
        session_id = await store.complete_login(user, caller.client, attempt, jti, time.time() + auth.refresh_seconds,
                                                merge_from=caller.anonymous)
    except UnknownOwner:  # deleted while its password was being checked
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN) from None
    return LoggedIn(user, session_id, jti)


async def reauthenticate(identity: Identity, password: str, caller: Caller, store: Store, auth: AuthHandler,
                         settings: Settings) -> User:
    """The caller's account if ``password`` is its password. Counted by the login lockout like a
    login (401 on a wrong password, 429 once locked out); on success the count is taken back."""
    username = identity.username or ""
    attempt = await _begin(username, caller, store, auth, settings)
    user = await store.get_user(identity.id)
    verified, _ = await _hashing(lambda: auth.check_password(
        password, user.password if user else None, caller.client, caller.watch))
    if user is None or not verified:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN)
    await store.reset_login_failures(username, caller.client, attempt)
    return user


async def change_password(identity: Identity, current: str, new: str, caller: Caller, store: Store,
                          auth: AuthHandler, settings: Settings) -> bool:
    """Check ``current``, then set ``new``: every other login session of the account ends, the
    caller's stays. False if the account is gone meanwhile."""
    await reauthenticate(identity, current, caller, store, auth, settings)
    hashed = await _hashing(lambda: auth.get_password_hash(new, caller.client, caller.watch))
    return await store.change_password(identity.id, hashed, keep_session=identity.session_id)
