"""Accounts: the book's ``/users`` routes, plus refresh, logout, password change and account deletion.

Changing the password and deleting the account ask for the password again (``reauthenticate``):
a stolen access token alone can do neither, and each wrong guess counts toward the login lockout.
"""

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

import accounts
import metrics
from accounts import ACCOUNT_DISABLED, INVALID_LOGIN, Caller, Proof
from authentication import AuthHandler, TokenError
from deps import (
    COMMON_ERRORS,
    REGISTERED_ERRORS,
    UNAVAILABLE,
    AuditDep,
    AuthDep,
    ClientAddress,
    CurrentUser,
    LimiterDep,
    OptionalAnonymous,
    SettingsDep,
    StoreDep,
    TrustDep,
    disconnect_watch,
    unauthorized,
    user_agent,
)
from models import (
    AccountDeletion,
    AccountOut,
    Cursor,
    LoginOut,
    LoginRequest,
    LogoutRequest,
    Message,
    PasswordChange,
    RefreshRequest,
    Refusal,
    SecondFactorRequired,
    TokenOut,
    UserCreate,
    UserList,
    UserOut,
    encode_cursor,
    normalize_username,
)
from store import User, public_profile

router = APIRouter(prefix="/users", tags=["users"], responses=COMMON_ERRORS)

TOO_MANY = {"model": Message, "description": "Over this client address's budget; see Retry-After"}
BUSY = {"model": Message, "description": "Too many password checks queued, or the database is unavailable "
        "(PostgreSQL backend); see Retry-After"}
REAUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    **REGISTERED_ERRORS,
    401: {"model": Message, "description": f"Missing, invalid, expired or revoked token; or `{INVALID_LOGIN}`: "
          "the password is wrong (counted like a failed login)"},
    429: {"model": Message, "description": "Too many failed logins for this username from this address; "
          "see Retry-After"},
    503: BUSY,
}


def _tokens(auth: AuthHandler, user: User, session_id: str, refresh_jti: str,
            refresh_expires_at: float | None = None) -> dict[str, Any]:
    return {
        "token": auth.encode_token(user.id, user.username, session_id),
        "token_type": "bearer",
        "expires_in": auth.access_seconds,
        "refresh_token": auth.encode_refresh_token(user.id, session_id, refresh_jti, refresh_expires_at),
    }


@router.get("/me", response_model=AccountOut, responses=REGISTERED_ERRORS)
async def me(user: CurrentUser) -> dict[str, Any]:
    """The caller's account: every attribute of its record but the secret ones, as ``AccountOut`` shows them."""
    return public_profile(user.user)  # type: ignore[arg-type]  # CurrentUser: an account, never a visitor


@router.get("/list", response_model=UserList, responses=REGISTERED_ERRORS)
async def list_users(_: CurrentUser, store: StoreDep, limit: Annotated[int, Query(ge=1, le=100)] = 50,
                     cursor: Annotated[Cursor | None, Query(description="`next_cursor` of the previous page")] = None,
                     ) -> dict[str, Any]:
    """A page of accounts, ordered by normalised (case-folded) username."""
    users = await store.list_users(limit + 1, after=cursor)
    more = len(users) > limit
    del users[limit:]
    return {"users": [public_profile(u) for u in users],
            "next_cursor": encode_cursor(normalize_username(users[-1].username)) if more else None}


def _caller(request: Request, client: str, anonymous: str | None) -> Caller:
    return Caller(client, disconnect_watch(request), anonymous, user_agent(request))


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut, responses={
    409: {"model": Message, "description": "Username already taken"}, 429: TOO_MANY, 503: BUSY})
async def register(body: UserCreate, request: Request, client: ClientAddress, store: StoreDep, auth: AuthDep,
                   limiter: LimiterDep, anonymous: OptionalAnonymous, audit: AuditDep) -> dict[str, Any]:
    """Create an account. Sent with an anonymous visitor's token, the visitor's data moves into it."""
    try:
        user = await accounts.register(body.username, body.password, _caller(request, client, anonymous),
                                       store, auth, limiter, audit)
    except HTTPException as exc:
        metrics.record_registration(metrics.refusal_outcome(exc))
        raise
    metrics.record_registration("created")
    return public_profile(user)


@router.post("/login", response_model=LoginOut, responses={
    401: {"model": Message, "description": INVALID_LOGIN},
    429: {"model": Refusal, "description": "Over this address's budget, or too many failed logins for this "
          "username from this address; or, with `challenge_required`, too many from all addresses: send a solved "
          "challenge as `altcha` (a trusted `device_token` is never refused); see Retry-After"},
    503: {"model": Refusal, "description": "Too many password checks queued (with `challenge_required`: a solved "
          "challenge goes first), or the database is unavailable (PostgreSQL backend); see Retry-After"},
    403: {"model": SecondFactorRequired | Message, "description": "The password is right and the account has TOTP "
          "on: `POST /users/login/mfa` with this `mfa_token` and a code completes the login; or "
          f"`{ACCOUNT_DISABLED}`: the right password of an account an administrator disabled"},
})
async def login(body: LoginRequest, request: Request, client: ClientAddress, store: StoreDep, auth: AuthDep,
                trust: TrustDep, limiter: LimiterDep, settings: SettingsDep,
                anonymous: OptionalAnonymous, audit: AuditDep) -> dict[str, Any]:
    """Trade a username and password for an access token, a refresh token and a device token.
    Send the device token with every later login from this device: a stranger's failed logins
    never lock it out."""
    try:
        done = await accounts.login(body.username, body.password, _caller(request, client, anonymous),
                                    Proof(body.device_token, body.altcha), store, auth, trust, limiter, settings,
                                    audit)
    except HTTPException as exc:
        metrics.record_login(metrics.refusal_outcome(exc))
        raise
    metrics.record_login("success")
    return {**_tokens(auth, done.user, done.session_id, done.refresh_jti), "device_token": done.device_token}


@router.post("/refresh", response_model=TokenOut, responses={401: {"model": Message}, 503: UNAVAILABLE})
async def refresh(body: RefreshRequest, request: Request, client: ClientAddress, store: StoreDep, auth: AuthDep,
                  settings: SettingsDep, audit: AuditDep) -> dict[str, Any]:
    """Rotate: a new access and refresh token; the old refresh token is spent. Presenting a spent
    one again ends the whole session (it was copied), logging out thief and owner alike, unless
    it was spent less than ``REFRESH_REUSE_GRACE_SECONDS`` ago (two tabs refreshing at once):
    then the answer carries the session's current refresh token. A session older than
    ``SESSION_MAX_DAYS`` cannot be refreshed: its user logs in again."""
    try:
        claims = auth.decode_token(body.refresh_token, kinds=("refresh",))
    except TokenError as exc:
        metrics.record_refresh("invalid")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    live = await store.session_user(claims["sid"], claims["sub"])  # for the metric: was a live session ended?
    rotated = await store.rotate_session(claims["sid"], claims["sub"], claims["jti"], new_jti := uuid.uuid4().hex,
                                         time.time() + auth.refresh_seconds, settings.refresh_reuse_grace_seconds,
                                         settings.session_max_days * 86400, client=client,
                                         user_agent=user_agent(request))
    user = await store.get_user(claims["sub"])
    if rotated is None or user is None or user.disabled:
        metrics.record_refresh("reuse_detected" if rotated is None and live is not None else "invalid")
        if rotated is None and live is not None:
            metrics.session_ended("reuse_detected")
            audit.record("refresh_reuse", live, client, user_agent(request), session_id=claims["sid"])
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid token")
    metrics.record_refresh("rotated" if rotated.jti == new_jti else "grace")
    return _tokens(auth, user, claims["sid"], rotated.jti, rotated.expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=REGISTERED_ERRORS)
async def logout(user: CurrentUser, request: Request, client: ClientAddress, store: StoreDep, auth: AuthDep,
                 audit: AuditDep, body: LogoutRequest | None = None) -> Response:
    """End this login session: its access and refresh tokens are refused from now on."""
    await store.end_session(user.session_id or "")
    metrics.session_ended("logout")
    audit.record("logout", user.user, client, user_agent(request), session_id=user.session_id)
    if body and body.refresh_token:
        try:
            claims = auth.decode_token(body.refresh_token, kinds=("refresh",))
        except TokenError:
            claims = None
        if claims and claims["sub"] == user.id:
            await store.end_session(claims["sid"])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses=REGISTERED_ERRORS)
async def logout_all(user: CurrentUser, request: Request, client: ClientAddress, store: StoreDep,
                     audit: AuditDep) -> Response:
    """End every session of this account, on every device, and revoke its device tokens."""
    await store.end_all_sessions(user.id)
    metrics.session_ended("logout_all")
    audit.record("logout_all", user.user, client, user_agent(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT, responses=REAUTH_ERRORS)
async def change_password(body: PasswordChange, request: Request, client: ClientAddress, user: CurrentUser,
                          store: StoreDep, auth: AuthDep, trust: TrustDep, settings: SettingsDep,
                          audit: AuditDep) -> Response:
    """Set a new password. Every other login session of the account ends; this one stays. Every
    device token of the account is revoked (the next login on each device gets a new one)."""
    if not await accounts.change_password(user, body.current_password, body.new_password,
                                          _caller(request, client, None), store, auth, trust, settings, audit):
        raise unauthorized("Invalid token")  # deleted meanwhile
    metrics.session_ended("password_change")
    audit.record("password_changed", user.user, client, user_agent(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT, responses=REAUTH_ERRORS)
async def delete_me(body: AccountDeletion, request: Request, client: ClientAddress, user: CurrentUser,
                    store: StoreDep, auth: AuthDep, trust: TrustDep, settings: SettingsDep,
                    audit: AuditDep) -> Response:
    """Delete this account and everything kept about it: cart, history, favourites, preferences,
    sessions. The body repeats the password."""
    await accounts.reauthenticate(user, body.password, _caller(request, client, None), store, auth, trust, settings,
                                  audit)
    await store.delete_user(user.id)
    metrics.session_ended("account_deleted")
    audit.record("account_deleted", user.user, client, user_agent(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
