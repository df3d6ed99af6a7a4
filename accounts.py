"""The account flows that sequence throttling, hashing and the store: register, log in, and
re-authenticate (to change the password or delete the account).

Each check runs where it costs least, cheapest first, so a refused request costs next to nothing:
the client address's budget (memory), then the hashing queue's bound (memory), then the
lockout (a store transaction), and only then a bcrypt hash. The routes in ``routers/users.py``
stay a few lines each and map these functions' answers to HTTP.

No limit here lets a stranger keep the owner out (trust.py). A login that carries a device token
the account was given before is *trusted*: no address budget or account limit refuses it, it has
its own failure count instead, and it hashes first. Anyone else is counted per (name, address)
and per name; past the name's limit, or when the hashing queue is long, they are asked to solve a
proof-of-work challenge (``challenge_required``), which admits them. A failure counts only once
a password was actually checked: an attempt shed or abandoned before its hash is given back.
"""

import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import HTTPException, status

from admission import OTHER, SOLVED, TRUSTED, ClientGone, Overloaded, Watch
from audit import Auditor
from authentication import AuthHandler
from deps import Identity, challenge_required, second_factor_required, service_unavailable, too_many_requests
from ratelimit import RateLimiter
from settings import Settings
from store import Attempt, ChallengeRequired, Device, Lockout, RateLimited, Store, UnknownOwner, User, UsernameTaken
from trust import Trust

T = TypeVar("T")
INVALID_LOGIN = "Invalid username and/or password"
LOCKED_OUT = "Too many failed login attempts from this address; try again later"
BUSY = "Too many logins and registrations in progress; try again shortly"
SOLVE = "solve a challenge (GET /challenge) and send its solution as `altcha`"
ACCOUNT_CHALLENGE = f"Too many failed logins for this account; {SOLVE}"
BUSY_CHALLENGE = f"Too many logins in progress; {SOLVE}, or try again shortly"
BAD_SOLUTION = "The challenge solution is invalid, expired or already used; solve a new one (GET /challenge)"
LOGIN_BUDGET = "Too many login attempts from this address; try again later"
ACCOUNT_DISABLED = "Account disabled"
MFA_SECONDS = 300  # an mfa_token's life
MFA_ATTEMPTS = 5  # wrong codes an mfa_token survives


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as throttling needs to know."""

    client: str  # normalised address (deps.client_address)
    watch: Watch | None = None  # returns once the client has gone (deps.disconnect_watch)
    anonymous: str | None = None  # the visitor whose data moves into the account
    user_agent: str | None = None  # truncated (deps.user_agent): for the audit log and the sessions list


@dataclass(frozen=True, slots=True)
class Proof:
    """What a login may carry besides the password (trust.py)."""

    device_token: str | None = None
    altcha: str | None = None


@dataclass(frozen=True, slots=True)
class LoggedIn:
    user: User
    session_id: str
    refresh_jti: str
    device_token: str


def lockout_rules(settings: Settings) -> Lockout:
    return Lockout(settings.login_max_failures, settings.login_max_failures_per_account,
                   settings.login_lockout_seconds)


def _budget(limiter: RateLimiter, kind: str, caller: Caller, detail: str) -> None:
    try:
        limiter.hit(kind, caller.client)
    except RateLimited as exc:
        raise too_many_requests(detail, exc.retry_after) from None


async def solved(payload: str | None, trust: Trust, store: Store) -> bool:
    """Whether ``payload`` solves a challenge of ours that nobody has used yet (spending it)."""
    solution = trust.verify(payload)
    return solution is not None and await store.spend_once(solution.key, solution.expires_at)


def _busy(exc: Overloaded, priority: int | None) -> HTTPException:
    """The 503 of a full hashing queue; an unproven login (``OTHER``, the class shed first) is
    told that a solved challenge would get it in."""
    if priority == OTHER:
        return challenge_required(status.HTTP_503_SERVICE_UNAVAILABLE, BUSY_CHALLENGE, exc.retry_after)
    return service_unavailable(BUSY, exc.retry_after)


async def _hashing(job: Callable[[], Awaitable[T]], login_priority: int | None = None) -> T:
    """Run a password job; a refused one is a 503 with ``Retry-After``."""
    try:
        return await job()
    except Overloaded as exc:
        raise _busy(exc, login_priority) from None
    except ClientGone:  # nobody reads this answer; it only ends the request (not paced: no Retry-After)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Client disconnected") from None


async def _checked(attempt: Attempt, store: Store, job: Callable[[], Awaitable[T]], priority: int | None) -> T:
    """``_hashing``, giving the attempt back when the password was never checked (shed, the
    client left, the request cancelled): only a checked password counts as a failure."""
    try:
        return await _hashing(job, priority)
    except BaseException:
        await store.give_back(attempt)
        raise


async def register(username: str, password: str, caller: Caller, store: Store, auth: AuthHandler,
                   limiter: RateLimiter, audit: Auditor | None = None) -> User:
    """Create an account (a visitor's data moves in). 429 over the address's budget, 409 for a
    taken name or one that looks like an account's (checked before hashing, to save one, and again
    by the store), 503 when busy."""
    _budget(limiter, "register", caller, "Too many registrations from this address; try again later")
    if await store.find_lookalike(username):
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken")
    hashed = await _hashing(lambda: auth.get_password_hash(password, caller.client, caller.watch))
    try:
        user = await store.add_user(username, hashed, merge_from=caller.anonymous)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken") from None
    if audit is not None:
        audit.record("register", user, caller.client, caller.user_agent)
    return user


async def login(username: str, password: str, caller: Caller, proof: Proof, store: Store, auth: AuthHandler,
                trust: Trust, limiter: RateLimiter, settings: Settings, audit: Auditor | None = None) -> LoggedIn:
    """Check the password and start a login session; the answer carries a device token (the
    same one for a trusted login). 429 over the address's budget, while this address is locked
    out for the name, or (``challenge_required``) past the name's limit without a solution; 503
    when the hashing queue is full; 401 for a wrong or unknown name or password (same answer,
    same time); 403 for the right password of a disabled account (decided only after the
    password: a guess learns nothing); 403 ``Second factor required`` with an ``mfa_token`` when
    the password is right and the account has TOTP on (no session yet: factors.login_mfa
    completes it). Events of an existing account go to ``audit``."""
    def note(type: str, **detail: object) -> None:
        if audit is not None and user is not None:
            audit.record(type, user, caller.client, caller.user_agent, **detail)

    user = await store.find_user(username)
    device = trust.device_key_for(proof.device_token, user.id) if user else None  # forged ones: None, no I/O
    if device is None:
        _budget(limiter, "login", caller, LOGIN_BUDGET)
    proven = bool(proof.altcha) and await solved(proof.altcha, trust, store)
    priority = TRUSTED if device else SOLVED if proven else OTHER
    try:
        auth.hashing.admit(caller.client, priority)  # before the lockout's store write: a 503 costs nothing
    except Overloaded as exc:
        raise _busy(exc, priority) from None
    name_key = trust.name_key(username)
    try:
        attempt = await store.begin_login(name_key, caller.client, lockout_rules(settings),
                                          user_id=user.id if user else None, device=device, proven=proven)
    except ChallengeRequired as exc:
        note("challenge_required", proof_sent=bool(proof.altcha))
        raise challenge_required(status.HTTP_429_TOO_MANY_REQUESTS, BAD_SOLUTION if proof.altcha else ACCOUNT_CHALLENGE,
                                 exc.retry_after) from None
    except RateLimited as exc:
        note("locked", retry_after=exc.retry_after)
        raise too_many_requests(LOCKED_OUT, exc.retry_after, "locked") from None
    if device is not None and attempt.device is None:  # revoked, expired or over its own limit: untrusted
        priority = SOLVED if proven else OTHER
        try:
            _budget(limiter, "login", caller, LOGIN_BUDGET)
        except HTTPException:
            await store.give_back(attempt)
            raise
    verified, rehash = await _checked(attempt, store, lambda: auth.check_password(  # always hashes
        password, user.password if user else None, caller.client, caller.watch, priority), priority)
    if user is None or not verified:
        note("login_failed", trusted_device=attempt.device is not None)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN)
    if user.disabled:  # the right password: not a guess, so it does not count toward a lockout
        await store.give_back(attempt)
        note("login_failed", reason="disabled")
        raise HTTPException(status.HTTP_403_FORBIDDEN, ACCOUNT_DISABLED)
    if rehash:  # BCRYPT_ROUNDS changed, or a hash of the un-normalised password: one cost, one form
        try:
            await store.update_user(user.id, password=await auth.get_password_hash(password, caller.client,
                                                                                    priority=priority))
        except (Overloaded, ClientGone):
            pass  # the next login rehashes
    if user.totp_enabled:  # the password is right, but alone it no longer logs in (factors.py)
        raise await _second_factor(user, attempt, store)
    return await start_session(user, attempt, caller, store, auth, trust, proof.device_token, audit=audit)


async def start_session(user: User, attempt: Attempt, caller: Caller, store: Store, auth: AuthHandler, trust: Trust,
                        device_token: str | None = None, gone: str = INVALID_LOGIN,
                        audit: Auditor | None = None) -> LoggedIn:
    """The end of every login (a password, a password and a second factor, a passkey): forget
    the attempt's failures, move the visitor's data in, keep the device token a trusted login
    came with or issue a new one, and start a session. 401 ``gone`` if the account was deleted
    meanwhile; 403 ``Account disabled`` for a disabled account (whichever way it proved itself)."""
    if user.disabled:
        await store.give_back(attempt)
        raise HTTPException(status.HTTP_403_FORBIDDEN, ACCOUNT_DISABLED)
    if attempt.device is not None and device_token:
        new_device = None
    else:
        device_token, key = trust.issue_device(user.id)
        new_device = Device(key, time.time() + trust.device_seconds)
    jti = uuid.uuid4().hex
    try:
        session_id = await store.complete_login(user, attempt, jti, time.time() + auth.refresh_seconds,
                                                merge_from=caller.anonymous, new_device=new_device,
                                                user_agent=caller.user_agent)
    except UnknownOwner:  # deleted while its password was being checked
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, gone) from None
    if audit is not None:
        audit.record("login", user, caller.client, caller.user_agent, session_id=session_id,
                     trusted_device=attempt.device is not None, new_device=new_device is not None)
    return LoggedIn(user, session_id, jti, device_token)


def mfa_key(mfa_token: str) -> str:
    """What the store keeps of an ``mfa_token``: a digest (a copy of the store cannot finish a login)."""
    return hashlib.sha256(mfa_token.encode("utf-8", "surrogatepass")).hexdigest()


async def _second_factor(user: User, attempt: Attempt, store: Store) -> HTTPException:
    """The 403 that hands out an ``mfa_token``: single use, ``MFA_SECONDS`` long, ``MFA_ATTEMPTS``
    codes. The attempt stays counted as a failed login until the second factor completes it, so
    guessing codes is bounded by the login lockout too."""
    token = secrets.token_urlsafe(32)
    await store.add_mfa_token(mfa_key(token), user.id, attempt, MFA_ATTEMPTS, time.time() + MFA_SECONDS)
    return second_factor_required(token, ["totp", "recovery_code"])


async def reauthenticate(identity: Identity, password: str, caller: Caller, store: Store, auth: AuthHandler,
                         trust: Trust, settings: Settings, audit: Auditor | None = None) -> User:
    """The caller's account if ``password`` is its password. The caller is signed in, so it is
    trusted like a known device (hashes first, no challenge for the account's limit), but each
    wrong guess counts per (name, address) like a failed login: 401, then 429 once that pair is
    locked out; on success the count is taken back."""
    username = identity.username or ""
    try:
        auth.hashing.admit(caller.client, TRUSTED)
        attempt = await store.begin_login(trust.name_key(username), caller.client, lockout_rules(settings), proven=True)
    except Overloaded as exc:
        raise service_unavailable(BUSY, exc.retry_after) from None
    except RateLimited as exc:
        raise too_many_requests(LOCKED_OUT, exc.retry_after, "locked") from None
    user = await store.get_user(identity.id)
    verified, _ = await _checked(attempt, store, lambda: auth.check_password(
        password, user.password if user else None, caller.client, caller.watch, TRUSTED), TRUSTED)
    if user is None or not verified:
        if audit is not None and user is not None:
            audit.record("login_failed", user, caller.client, caller.user_agent, reason="reauthenticate")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN)
    await store.reset_login_failures(attempt)
    return user


async def change_password(identity: Identity, current: str, new: str, caller: Caller, store: Store,
                          auth: AuthHandler, trust: Trust, settings: Settings, audit: Auditor | None = None) -> bool:
    """Check ``current``, then set ``new``: every other login session of the account ends, the
    caller's stays, and every device token is revoked. False if the account is gone meanwhile."""
    await reauthenticate(identity, current, caller, store, auth, trust, settings, audit)
    hashed = await _hashing(lambda: auth.get_password_hash(new, caller.client, caller.watch, TRUSTED))
    return await store.change_password(identity.id, hashed, keep_session=identity.session_id)
