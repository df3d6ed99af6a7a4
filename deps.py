"""FastAPI dependencies: who is calling, and the service's shared objects.

A protected route costs one token check (usually a cache hit) and a few dictionary lookups: the
store answers from memory after an 8-byte freshness check.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from authentication import AuthHandler, TokenError
from models import Message
from settings import Settings
from store import Store

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="`token` from `POST /users/login`, or `access_token` from `POST /anonymous-login`.",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: an account (with its login session) or an anonymous visitor."""

    id: str
    username: str | None = None
    session_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.username is None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    store.refresh()
    return store


async def get_auth(request: Request) -> AuthHandler:
    return request.app.state.auth


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
AuthDep = Annotated[AuthHandler, Depends(get_auth)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_identity(credentials: BearerCredentials, store: StoreDep, auth: AuthDep) -> Identity:
    if credentials is None:
        raise unauthorized("Not authenticated")
    try:
        claims = auth.decode_token(credentials.credentials)
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    subject = claims["sub"]
    if claims["typ"] == "anonymous":
        if not await store.anonymous_exists(subject):
            raise unauthorized("Invalid token")  # purged or upgraded: get a new one
        await store.touch_anonymous(subject)
        return Identity(subject)
    user = await store.get_user(subject)
    if user is None or not await store.session_valid(claims["sid"], subject):
        raise unauthorized("Invalid token")  # deleted user, or the session was logged out
    return Identity(subject, user.username, claims["sid"])


async def get_registered(identity: Annotated[Identity, Depends(get_identity)]) -> Identity:
    if identity.anonymous:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Registered account required")
    return identity


async def get_optional_anonymous(credentials: BearerCredentials, store: StoreDep, auth: AuthDep) -> str | None:
    """The anonymous visitor behind a register or login call, if any; a bad token is ignored."""
    if credentials is None:
        return None
    try:
        claims = auth.decode_token(credentials.credentials, kinds=("anonymous",))
    except TokenError:
        return None
    return claims["sub"] if await store.anonymous_exists(claims["sub"]) else None


CurrentIdentity = Annotated[Identity, Depends(get_identity)]
CurrentUser = Annotated[Identity, Depends(get_registered)]
OptionalAnonymous = Annotated[str | None, Depends(get_optional_anonymous)]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing, invalid, expired or revoked token"},
}
REGISTERED_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS, 403: {"model": Message, "description": "An anonymous token: a registered account is required"},
}
