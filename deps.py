"""FastAPI dependencies: who is calling, and the service's shared objects.

A protected route costs one token check (usually a cache hit) and a few dictionary lookups: the
store answers from memory (JSON: after an 8-byte freshness check; PostgreSQL: from a cache that
LISTEN/NOTIFY keeps true). ``fastpath.py`` runs the ``CurrentUser``/``CurrentIdentity`` checks
first and outside FastAPI's dependency solver; without it they work as ordinary dependencies.
"""

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPBearer
from starlette.types import Scope

from admission import Watch
from audit import USER_AGENT_CHARS, Auditor
from authentication import AuthHandler, TokenError
from models import Message
from ratelimit import RateLimiter
from settings import Settings
from store import Store, User
from trust import Trust

if TYPE_CHECKING:
    from factors import Factors  # it imports this module

BEARER_DESCRIPTION = "`token` from `POST /users/login`, or `access_token` from `POST /anonymous-login`."


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a microsecond more per request
class Identity:
    """The caller: an account (its record, as the store keeps it, with its login session) or an
    anonymous visitor (no record)."""

    id: str
    user: User | None = None
    session_id: str | None = None

    @property
    def username(self) -> str | None:
        return self.user.username if self.user is not None else None

    @property
    def anonymous(self) -> bool:
        return self.user is None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def too_many_requests(detail: str, retry_after: int, outcome: str = "throttled") -> HTTPException:
    """A 429; ``outcome`` (``throttled``: a budget, ``locked``: a lockout) labels it in the metrics."""
    exc = HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": str(retry_after)})
    exc.outcome = outcome  # type: ignore[attr-defined]
    return exc


def service_unavailable(detail: str, retry_after: int) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(retry_after)})


class ChallengeNeeded(HTTPException):
    """A 429 or 503 that a solved proof-of-work challenge would have avoided (trust.py): its body
    says so with ``"challenge_required": true`` (app.http_error)."""

    challenge_required = True


def challenge_required(status_code: int, detail: str, retry_after: int) -> HTTPException:
    return ChallengeNeeded(status_code, detail, headers={"Retry-After": str(retry_after)})


SECOND_FACTOR = "Second factor required"


def second_factor_required(mfa_token: str, methods: list[str]) -> HTTPException:
    """The 403 of a password login with a second factor on: the password was right, and
    ``POST /users/login/mfa`` completes it with ``mfa_token`` (app.http_error adds ``extra``)."""
    exc = HTTPException(status.HTTP_403_FORBIDDEN, SECOND_FACTOR)
    exc.extra = {"mfa_token": mfa_token, "methods": methods}  # type: ignore[attr-defined]
    return exc


UNPARSEABLE_CLIENT = "unparseable"  # the one bucket of every client address that is not an IP address


def client_address(request: Request) -> str:
    """The client's address for per-client limits: uvicorn's view (it believes ``X-Forwarded-For``
    only from ``--forwarded-allow-ips``), normalised. A value that is not an IP address can only
    come from a trusted proxy passing on a forged header, and uvicorn has already replaced the
    peer's address with it; so all such values share one bucket and never open a fresh allowance.
    IPv6 clients count per /64, the block one subscriber usually gets."""
    host = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return UNPARSEABLE_CLIENT
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def disconnect_watch(request: Request) -> Watch:
    """A coroutine function that returns once the client has gone (ASGI ``http.disconnect``); for
    a handler whose body has been read, so nothing else is receiving."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_auth(request: Request) -> AuthHandler:
    return request.app.state.auth


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_limiter(request: Request) -> RateLimiter:
    return request.app.state.limiter


async def get_trust(request: Request) -> Trust:
    return request.app.state.trust


async def get_audit(request: Request) -> Auditor:
    return request.app.state.audit


def user_agent(request: Request) -> str | None:
    """The caller's ``User-Agent``, truncated (audit.USER_AGENT_CHARS): for the audit log and the sessions list."""
    value = request.headers.get("user-agent")
    return value[:USER_AGENT_CHARS] if value else None


async def get_factors(request: Request) -> "Factors":
    return request.app.state.factors


StoreDep = Annotated[Store, Depends(get_store)]
AuthDep = Annotated[AuthHandler, Depends(get_auth)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
TrustDep = Annotated[Trust, Depends(get_trust)]
AuditDep = Annotated[Auditor, Depends(get_audit)]
ClientAddress = Annotated[str, Depends(client_address)]


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:  # ASGI: lower-case names; cheaper than Request.headers
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip().decode("latin-1") or None if scheme.lower() == b"bearer" else None
    return None


IDENTITY_KEY = "auth.identity"  # the caller, once found, in the request's ASGI scope


class _Bearer(HTTPBearer):
    """FastAPI's ``HTTPBearer``, so OpenAPI and Swagger UI's Authorize button know the scheme,
    doing the whole check itself."""

    def __init__(self) -> None:
        super().__init__(scheme_name="HTTPBearer", description=BEARER_DESCRIPTION, auto_error=False)


ADMIN_REQUIRED = "Admin rights required"


class BearerIdentity(_Bearer):
    def __init__(self, registered_only: bool, optional: bool = False, admin_only: bool = False) -> None:
        """``optional``: no ``Authorization`` header is ``None`` (a bad token is still a 401);
        ``admin_only``: an account without ``is_admin`` (or a visitor) gets 403."""
        super().__init__()
        self.registered_only = registered_only
        self.optional = optional
        self.admin_only = admin_only

    async def __call__(self, request: Request) -> Identity | None:  # type: ignore[override]
        return await self.identify(request.scope)

    async def identify(self, scope: Scope) -> Identity | None:
        """The caller, found once per request (kept in the scope), then this check's own rule."""
        identity: Identity | None = scope.get(IDENTITY_KEY)
        if identity is None:
            if self.optional and _bearer_token(scope) is None:
                return None
            identity = scope[IDENTITY_KEY] = await _identify(scope)
        if self.admin_only and (identity.user is None or not identity.user.is_admin):
            raise HTTPException(status.HTTP_403_FORBIDDEN, ADMIN_REQUIRED)
        if self.registered_only and identity.anonymous:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Registered account required")
        return identity


async def _identify(scope: Scope) -> Identity:
    token = _bearer_token(scope)
    if token is None:
        raise unauthorized("Not authenticated")
    state = scope["app"].state
    try:
        claims = state.auth.decode_token(token)
    except TokenError as exc:
        raise unauthorized(str(exc)) from None
    store: Store = state.store
    subject = claims["sub"]
    if claims["typ"] == "anonymous":
        if not await store.anonymous_exists(subject):
            raise unauthorized("Invalid token")  # purged or upgraded: get a new one
        await store.touch_anonymous(subject)
        return Identity(subject)
    user = await store.session_user(claims["sid"], subject)
    if user is None or user.disabled:  # deleted, logged out, or disabled (its sessions end too; this is the backstop)
        raise unauthorized("Invalid token")
    return Identity(subject, user, claims["sid"])


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
        return claims["sub"] if await store.anonymous_exists(claims["sub"]) else None


MAX_BODY_BYTES = 64 * 1024  # app.BodyLimit answers 413 over it (and app.declare_body_limit says so in OpenAPI)


CurrentIdentity = Annotated[Identity, Security(BearerIdentity(registered_only=False))]
CurrentUser = Annotated[Identity, Security(BearerIdentity(registered_only=True))]
AdminUser = Annotated[Identity, Security(BearerIdentity(registered_only=True, admin_only=True))]
OptionalIdentity = Annotated[Identity | None, Security(BearerIdentity(registered_only=False, optional=True))]
OptionalAnonymous = Annotated[str | None, Security(AnonymousVisitor())]

# Every route: app.HeaderLimit answers it before routing (declared on each router and the app).
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    431: {"model": Message, "description": "Request headers over 16 KiB in all"},
}
# With DATABASE_URL, a route that needs the store answers 503 while the database is down (app.py).
UNAVAILABLE: dict[str, Any] = {"model": Message, "description": "The database is unavailable (PostgreSQL "
                               "backend only); see Retry-After"}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing, invalid, expired or revoked token"},
    503: UNAVAILABLE,  # the token's session is checked in the store
}
REGISTERED_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS, 403: {"model": Message, "description": "An anonymous token: a registered account is required"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS, 403: {"model": Message, "description": f"`{ADMIN_REQUIRED}`: the token is not an administrator's"},
}
