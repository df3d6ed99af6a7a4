"""Accounts: the book's ``/users`` routes, plus refresh, logout, password change and account deletion.

Changing the password and deleting the account ask for the password again (``reauthenticate``):
a stolen access token alone can do neither, and each wrong guess counts toward the login lockout.
"""

import time
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status

from authentication import AuthHandler, TokenError
from deps import (
    AUTH_ERRORS,
    REGISTERED_ERRORS,
    AuthDep,
    CurrentUser,
    Identity,
    IdentityRoute,
    OptionalAnonymous,
    SettingsDep,
    StoreDep,
    too_many_requests,
    unauthorized,
)
from models import (
    AccountDeletion,
    LoginRequest,
    LogoutRequest,
    Message,
    PasswordChange,
    RefreshRequest,
    TokenOut,
    UserCreate,
    UserList,
    UserOut,
)
from settings import Settings
from store import RateLimited, Store, UnknownOwner, User, UsernameTaken

router = APIRouter(prefix="/users", tags=["users"], route_class=IdentityRoute)

INVALID_LOGIN = "Invalid username and/or password"
LOCKED_OUT = "Too many failed login attempts; try again later"
REAUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    **REGISTERED_ERRORS,
    401: {"model": Message, "description": f"Missing, invalid, expired or revoked token; or `{INVALID_LOGIN}`: "
          "the password is wrong (counted like a failed login)"},
    429: {"model": Message, "description": "Too many failed logins for this username; see Retry-After"},
}


def _tokens(auth: AuthHandler, user: User, session_id: str, refresh_jti: str) -> dict[str, Any]:
    return {
        "token": auth.encode_token(user.id, user.username, session_id),
        "token_type": "bearer",
        "expires_in": auth.access_seconds,
        "refresh_token": auth.encode_refresh_token(user.id, session_id, refresh_jti),
    }


@router.get("/me", response_model=UserOut, responses=REGISTERED_ERRORS)
async def me(user: CurrentUser) -> dict[str, str | None]:
    return {"id": user.id, "username": user.username}


@router.get("/list", response_model=UserList, responses=REGISTERED_ERRORS)
async def list_users(_: CurrentUser, store: StoreDep) -> dict[str, list[dict[str, str]]]:
    return {"users": [{"id": u.id, "username": u.username} for u in await store.list_users()]}


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut,
             responses={409: {"model": Message, "description": "Username already taken"}})
async def register(body: UserCreate, store: StoreDep, auth: AuthDep, anonymous: OptionalAnonymous) -> dict[str, str]:
    """Create an account. Sent with an anonymous visitor's token, the visitor's cart moves into it."""
    if await store.find_user(body.username):  # saves a bcrypt hash; the store checks again
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken")
    hashed = await auth.get_password_hash(body.password)
    try:
        user = await store.add_user(body.username, hashed, merge_from=anonymous)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "Username already taken") from None
    return {"id": user.id, "username": user.username}


@router.post("/login", response_model=TokenOut, responses={
    401: {"model": Message, "description": INVALID_LOGIN},
    429: {"model": Message, "description": "Too many failed logins for this username; see Retry-After"},
})
async def login(body: LoginRequest, store: StoreDep, auth: AuthDep, settings: SettingsDep,
                anonymous: OptionalAnonymous) -> dict[str, Any]:
    """Trade a username and password for an access token and a refresh token."""
    try:
        await store.begin_login(body.username, settings.login_max_failures, settings.login_lockout_seconds)
    except RateLimited as exc:
        raise too_many_requests(LOCKED_OUT, exc.retry_after) from None
    user = await store.find_user(body.username)
    verified, rehash = await auth.check_password(body.password, user.password if user else None)  # always hashes
    if user is None or not verified:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN)
    if rehash:  # BCRYPT_ROUNDS changed, or a hash of the un-normalised password: one cost, one form
        await store.set_password(user.id, await auth.get_password_hash(body.password))
    jti = uuid.uuid4().hex
    try:
        session_id = await store.complete_login(user, jti, time.time() + auth.refresh_seconds, merge_from=anonymous)
    except UnknownOwner:  # deleted while its password was being checked
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN) from None
    return _tokens(auth, user, session_id, jti)


@router.post("/refresh", response_model=TokenOut, responses={401: {"model": Message}})
async def refresh(body: RefreshRequest, store: StoreDep, auth: AuthDep, settings: SettingsDep) -> dict[str, Any]:
    """Rotate: a new access and refresh token; the old refresh token is spent. Presenting a spent
    one again ends the whole session (it was copied), logging out thief and owner alike. A session
    older than `SESSION_MAX_DAYS` cannot be refreshed: its user logs in again."""
    try:
        claims = auth.decode_token(body.refresh_token, kinds=("refresh",))
    except TokenError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    jti = uuid.uuid4().hex
    rotated = await store.rotate_session(claims["sid"], claims["sub"], claims["jti"], jti,
                                         time.time() + auth.refresh_seconds, settings.session_max_days * 86400)
    user = await store.get_user(claims["sub"])
    if not rotated or user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid token")
    return _tokens(auth, user, claims["sid"], jti)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=AUTH_ERRORS)
async def logout(user: CurrentUser, store: StoreDep, auth: AuthDep, body: LogoutRequest | None = None) -> Response:
    """End this login session: its access and refresh tokens are refused from now on."""
    await store.end_session(user.session_id or "")
    if body and body.refresh_token:
        try:
            claims = auth.decode_token(body.refresh_token, kinds=("refresh",))
        except TokenError:
            claims = None
        if claims and claims["sub"] == user.id:
            await store.end_session(claims["sid"])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses=REGISTERED_ERRORS)
async def logout_all(user: CurrentUser, store: StoreDep) -> Response:
    """End every session of this account, on every device."""
    await store.end_all_sessions(user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def reauthenticate(identity: Identity, password: str, store: Store, auth: AuthHandler,
                         settings: Settings) -> User:
    """The caller's account if ``password`` is its password; counted by the login lockout like a
    login (401 on a wrong password, 429 once locked out), and on success the count is reset."""
    username = identity.username or ""
    try:
        await store.begin_login(username, settings.login_max_failures, settings.login_lockout_seconds)
    except RateLimited as exc:
        raise too_many_requests(LOCKED_OUT, exc.retry_after) from None
    user = await store.get_user(identity.id)
    verified, _ = await auth.check_password(password, user.password if user else None)
    if user is None or not verified:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_LOGIN)
    await store.reset_login_failures(username)
    return user


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT, responses=REAUTH_ERRORS)
async def change_password(body: PasswordChange, user: CurrentUser, store: StoreDep, auth: AuthDep,
                          settings: SettingsDep) -> Response:
    """Set a new password. Every other login session of the account ends; this one stays."""
    await reauthenticate(user, body.current_password, store, auth, settings)
    hashed = await auth.get_password_hash(body.new_password)
    if not await store.change_password(user.id, hashed, keep_session=user.session_id):
        raise unauthorized("Invalid token")  # deleted meanwhile
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT, responses=REAUTH_ERRORS)
async def delete_me(body: AccountDeletion, user: CurrentUser, store: StoreDep, auth: AuthDep,
                    settings: SettingsDep) -> Response:
    """Delete this account, its cart and its sessions; the body repeats the password."""
    await reauthenticate(user, body.password, store, auth, settings)
    await store.delete_user(user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
