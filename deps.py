"""FastAPI dependencies: who is calling, and the service's shared objects.

A protected route costs one token check (usually a cache hit) and a few dictionary lookups: the
store answers from memory after an 8-byte freshness check.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPBearer

from authentication import AuthHandler, TokenError
from models import Message
from settings import Settings
from store import Store

BEARER_DESCRIPTION = "`token` from `POST /users/login`, or `access_token` from `POST /anonymous-login`."


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a microsecond more per request
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


async def _identify(request: Request, token: str | None) -> Identity:
    if token is None:
        raise unauthorized("Not authenticated")
    auth: AuthHandler = request.app.state.auth
    try:
        claims = auth.decode_token(token)
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    store: Store = request.app.state.store
    store.refresh()
    subject = claims["sub"]
    if claims["typ"] == "anonymous":
        if not await store.anonymous_exists(subject):
            raise unauthorized("Invalid token")  # purged or upgraded: get a new one
        await store.touch_anonymous(subject)
        return Identity(subject)
    user = await store.session_user(claims["sid"], subject)
    if user is None:
        raise unauthorized("Invalid token")  # deleted user, or the session was logged out
    return Identity(subject, user.username, claims["sid"])


class _Bearer(HTTPBearer):
    """FastAPI's ``HTTPBearer`` (so OpenAPI and Swagger UI's Authorize button know the scheme)
    that does the whole check itself: a protected route is then one dependency node, which
    matters because FastAPI spends microseconds on each node of every request."""

    def __init__(self) -> None:
        super().__init__(scheme_name="HTTPBearer", description=BEARER_DESCRIPTION, auto_error=False)

    @staticmethod
    def token(request: Request) -> str | None:
        for name, value in request.scope["headers"]:  # ASGI: lower-case names; cheaper than .headers
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return token.strip() or None if scheme.lower() == "bearer" else None
        return None


class BearerIdentity(_Bearer):
    def __init__(self, registered_only: bool) -> None:
        super().__init__()
        self.registered_only = registered_only

    async def __call__(self, request: Request) -> Identity:  # type: ignore[override]
        identity = await _identify(request, self.token(request))
        if self.registered_only and identity.anonymous:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Registered account required")
        return identity


class AnonymousVisitor(_Bearer):
    """The visitor behind a register or login call, if any; a bad or foreign token is ignored."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        token = self.token(request)
        if token is None:
            return None
        try:
            claims = request.app.state.auth.decode_token(token, kinds=("anonymous",))
        except TokenError:
            return None
        store: Store = request.app.state.store
        store.refresh()
        return claims["sub"] if await store.anonymous_exists(claims["sub"]) else None


CurrentIdentity = Annotated[Identity, Security(BearerIdentity(registered_only=False))]
CurrentUser = Annotated[Identity, Security(BearerIdentity(registered_only=True))]
OptionalAnonymous = Annotated[str | None, Security(AnonymousVisitor())]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing, invalid, expired or revoked token"},
}
REGISTERED_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS, 403: {"model": Message, "description": "An anonymous token: a registered account is required"},
}
