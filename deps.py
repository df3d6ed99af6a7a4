"""FastAPI dependencies: who is calling, and the service's shared objects.

A protected route costs one token check (usually a cache hit) and a few dictionary lookups: the
store answers from memory after an 8-byte freshness check.
"""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from inspect import iscoroutinefunction
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, Security, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

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


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:  # ASGI: lower-case names; cheaper than Request.headers
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip().decode("latin-1") or None if scheme.lower() == b"bearer" else None
    return None


class _Bearer(HTTPBearer):
    """FastAPI's ``HTTPBearer``, so OpenAPI and Swagger UI's Authorize button know the scheme,
    doing the whole check itself."""

    def __init__(self) -> None:
        super().__init__(scheme_name="HTTPBearer", description=BEARER_DESCRIPTION, auto_error=False)


class BearerIdentity(_Bearer):
    def __init__(self, registered_only: bool) -> None:
        super().__init__()
        self.registered_only = registered_only

    async def __call__(self, request: Request) -> Identity:  # type: ignore[override]
        return await self.identify(request.scope)

    async def identify(self, scope: Scope) -> Identity:
        token = _bearer_token(scope)
        if token is None:
            raise unauthorized("Not authenticated")
        state = scope["app"].state
        try:
            claims = state.auth.decode_token(token)
        except TokenError as exc:
            raise unauthorized(str(exc)) from None
        store: Store = state.store
        store.refresh()
        subject = claims["sub"]
        if claims["typ"] == "anonymous":
            if not await store.anonymous_exists(subject):
                raise unauthorized("Invalid token")  # purged or upgraded: get a new one
            await store.touch_anonymous(subject)
            if self.registered_only:
                raise HTTPException(status.HTTP_403_FORBIDDEN, "Registered account required")
            return Identity(subject)
        user = await store.session_user(claims["sid"], subject)
        if user is None:
            raise unauthorized("Invalid token")  # deleted user, or the session was logged out
        return Identity(subject, user.username, claims["sid"])


class AnonymousVisitor(_Bearer):
    """The visitor behind a register or login call, if any; a bad or foreign token is ignored."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        token = _bearer_token(request.scope)
        if token is None:
            return None
        try:
            claims = request.app.state.auth.decode_token(token, kinds=("anonymous",))
        except TokenError:
            return None
        store: Store = request.app.state.store
        store.refresh()
        return claims["sub"] if await store.anonymous_exists(claims["sub"]) else None


IDENTITY_KEY = "auth.identity"  # where IdentityRoute leaves the caller, in the ASGI scope


class IdentityRoute(APIRoute):
    """An ``APIRoute`` that runs its ``CurrentUser``/``CurrentIdentity`` check itself, first,
    instead of leaving it to FastAPI's dependency solver.

    Why: FastAPI spends ~20 us per request on a dependency node, a tenth of a ``/users/me``
    (bench/README.md). Handlers still declare ``user: CurrentUser``, and OpenAPI (so Swagger UI's
    Authorize button) still sees the scheme: both read ``self.dependant``, which stays whole. Only
    the handler FastAPI runs per request is built from a copy without the check's node; the
    identity reaches the endpoint through the ASGI scope. ``app.dependency_overrides`` of the
    check are not honoured on these routes.
    """

    _check: BearerIdentity | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        whole = self.dependant
        checks = [d for d in whole.dependencies if isinstance(d.call, BearerIdentity)]
        if not checks:
            return super().get_route_handler()
        if len({id(d.call) for d in checks}) > 1:
            raise TypeError(f"{self.path}: CurrentUser and CurrentIdentity in one route")
        self._check = check = checks[0].call
        names = [d.name for d in checks]
        endpoint, is_async = whole.call, iscoroutinefunction(whole.call)
        request_name = whole.request_param_name or "_identity_request"
        keep_request = whole.request_param_name is not None
        assert endpoint is not None and check is not None

        async def call(**values: Any) -> Any:
            request: Request = values[request_name] if keep_request else values.pop(request_name)
            identity = request.scope.get(IDENTITY_KEY) or await check.identify(request.scope)
            for name in names:
                values[name] = identity
            return await endpoint(**values) if is_async else await run_in_threadpool(endpoint, **values)

        self.dependant = replace(whole, call=call, request_param_name=request_name,
                                 dependencies=[d for d in whole.dependencies if d not in checks])
        try:
            return super().get_route_handler()
        finally:
            self.dependant = whole

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._check is not None and scope["method"] in self.methods:
            scope[IDENTITY_KEY] = await self._check.identify(scope)  # 401/403 before any validation
        await super().handle(scope, receive, send)


CurrentIdentity = Annotated[Identity, Security(BearerIdentity(registered_only=False))]
CurrentUser = Annotated[Identity, Security(BearerIdentity(registered_only=True))]
OptionalAnonymous = Annotated[str | None, Security(AnonymousVisitor())]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing, invalid, expired or revoked token"},
}
REGISTERED_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS, 403: {"model": Message, "description": "An anonymous token: a registered account is required"},
}
