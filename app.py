"""The FastAPI app: settings, the store's lifetime, CORS, the routers and the built SPA.

Run it with ``uvicorn app:app`` (add ``--reload`` while developing, ``--workers N`` in production).
"""

import asyncio
import logging
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from copy import deepcopy
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import fastpath
import logs
import metrics
from admission import EarlyRetries
from audit import Auditor
from authentication import AuthHandler
from deps import COMMON_ERRORS, MAX_BODY_BYTES, client_address
from factors import Factors
from models import Message as MessageOut
from ratelimit import Budget, RateLimiter
from routers import admin, anonymous, factors, personal, security, shop, users
from security_headers import SecurityHeaders, build_headers
from settings import Settings
from store import Store, StoreError, StoreUnavailable, build_store
from trust import Trust

log = logging.getLogger("uvicorn.error")
MAX_HEADER_BYTES = 16 * 1024
READY_TIMEOUT_SECONDS = 2.0  # a readiness probe answers 503 rather than hang on a database
MAINTENANCE_SECONDS = 3600
SHARE_COUNTS_SECONDS = 1.0
AUDIT_FLUSH_SECONDS = 1.0  # audit events are written at most this often per worker (audit.py: the loss window)
VIEW_FLUSH_SECONDS = 1.0  # views are written at most this often per worker (store/json_visitors.py: record_view)
BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 for a body it cannot decode
TOKEN_PATHS = ("/users/login", "/users/refresh", "/anonymous-login", "/challenge", "/users/login/mfa",
               "/users/login/passkey", "/users/login/passkey/options")  # answers never to cache


async def _maintain(store: Store, settings: Settings) -> None:
    """Forget idle visitors and expired sessions, so the store does not grow without bound."""
    purged = await store.purge_anonymous(settings.anonymous_token_expire_days * 86400)
    await store.prune()
    await store.prune_audit(time.time() - settings.audit_retention_days * 86400)
    if purged:
        log.info("purged %d idle anonymous visitor(s)", purged)


async def _periodically(seconds: float, job: Callable[[], Awaitable[None]], what: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except StoreUnavailable as exc:  # the database is down: no traceback each round
            log.warning("%s failed: %s", what, exc)
        except Exception:  # keep serving; the next round tries again
            log.exception("%s failed", what)


def _limiter(store: Store, settings: Settings) -> RateLimiter:
    return RateLimiter(store, {"login": Budget(settings.login_rate_limit, 60),
                               "register": Budget(settings.register_rate_limit, 3600)})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    fastpath.apply(app)  # every route included by now, whoever included it; before the first request
    settings: Settings = app.state.settings
    metrics.forget_dead_workers()
    if not metrics.MULTIPROC_DIR and multiprocessing.parent_process() is not None:
        log.warning("PROMETHEUS_MULTIPROC_DIR is not set: under --workers, /metrics shows one worker's figures")
    store = build_store(settings)
    try:
        await store.open()
    except StoreError as exc:
        log.error("Cannot start: %s", exc)
        raise
    secret = await asyncio.to_thread(lambda: settings.secret)  # may create the secret file
    auth = await asyncio.to_thread(  # it hashes a dummy password: not on the event loop
        AuthHandler, secret, settings.bcrypt_rounds, settings.access_token_expire_minutes,
        settings.refresh_token_expire_days, settings.anonymous_token_expire_days,
        settings.hash_queue_max_wait_seconds)
    limiter = _limiter(store, settings)
    app.state.store, app.state.auth, app.state.limiter = store, auth, limiter
    app.state.trust = Trust(secret, settings.device_token_days, settings.challenge_expire_seconds,
                            settings.challenge_max_number)
    app.state.factors = Factors.from_settings(secret, settings)
    app.state.early_retries = EarlyRetries(settings.early_retry_delay_seconds)
    app.state.audit = auditor = Auditor(store, enabled=settings.audit_enabled)
    await _maintain(store, settings)
    tasks = [asyncio.create_task(_periodically(MAINTENANCE_SECONDS, lambda: _maintain(store, settings),
                                               "store maintenance")),
             asyncio.create_task(_periodically(SHARE_COUNTS_SECONDS, limiter.share, "sharing request counts")),
             # views this worker noted, one transaction a second (none when idle); on failure they
             # stay in memory for the next round
             asyncio.create_task(_periodically(VIEW_FLUSH_SECONDS, store.flush_views, "writing the browsing history")),
             # audit events this worker noted, one batch a second, without an fsync (audit.py)
             asyncio.create_task(_periodically(AUDIT_FLUSH_SECONDS, auditor.flush, "writing the audit log"))]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        try:
            await limiter.share()
            await store.flush_views()  # a clean stop keeps every view
            await auditor.flush(everything=True)  # and every audit event, open folds included
        except Exception:
            log.exception("writing the request counts, browsing history and audit log at shutdown failed")
        await store.close()  # JSON: waits for queued writes and folds the journal
        auth.close()
        metrics.worker_stopped()


class HeaderLimit:
    """Answer 431 to requests whose headers total more than ``max_bytes``, before any other work
    (outermost middleware). uvicorn has read them by then: in front of the service, a proxy's own
    limit (nginx's ``large_client_header_buffers``) also keeps them off the wire."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(n) + len(v) for n, v in scope["headers"]) > self.max_bytes:
            return await _error(send, 431, b'{"detail":"Request headers too large"}')
        await self.app(scope, receive, send)


def _utf16_or_32(start: bytes) -> bool:
    """A body that ``json.loads`` would decode as UTF-16 or UTF-32 (it guesses from a byte-order
    mark or from NULs in the first bytes): JSON in UTF-8 never starts with either."""
    return start[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in start[:4]


NOT_UTF8 = RequestValidationError([{"loc": ("body", 0), "type": "json_invalid",
                                    "msg": "The body is not valid UTF-8 (it is UTF-16 or UTF-32): send JSON encoded "
                                           "as UTF-8"}])


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before they are buffered, and bodies in
    UTF-16 or UTF-32 with the 422 a body that is not UTF-8 gets (``http_error``)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await _error(send, 413, b'{"detail":"Request body too large"}')
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            body = message.get("body", b"")
            if not seen and body and _utf16_or_32(body):
                raise NOT_UTF8
            seen += len(body)
            if seen > self.max_bytes:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "Request body too large")
            return message

        await self.app(scope, limited, send)


BODY_TOO_LARGE = {"description": f"Request body over {MAX_BODY_BYTES // 1024} KiB",
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}}


def declare_body_limit(app: FastAPI) -> None:
    """OpenAPI declares ``BodyLimit``'s 413 on every operation whose method takes a body (all but
    GET, HEAD and OPTIONS): the middleware answers before any route, so no route says it itself."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI's, cached in app.openapi_schema: completed in place
            schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
                "Message", MessageOut.model_json_schema())
            for operations in schema["paths"].values():
                for method, operation in operations.items():
                    if method not in ("get", "head", "options"):
                        operation["responses"].setdefault("413", deepcopy(BODY_TOO_LARGE))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _error(send: Send, code: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape without echoing the input: it may hold a password, or text that
    cannot even be encoded back (a lone surrogate)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": e["loc"], "msg": _message(e), "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def _message(error: dict) -> str:
    """pydantic's message; for a JSON syntax error, with what is wrong (``Expecting value``)."""
    if error["type"] == "json_invalid" and isinstance(error.get("ctx"), dict) and error["ctx"].get("error"):
        return f"{error['msg']}: {error['ctx']['error']} (at position {error['loc'][-1]})"
    return error["msg"]


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's handler, except for a body it could not even decode (not UTF-8): FastAPI answers
    400 "There was an error parsing the body", a status no route declares; here it is a 422 in
    the validation-error shape that says what is wrong. A refusal with ``Retry-After`` to a client
    that came back too early is answered no sooner than that (``admission.EarlyRetries``)."""
    assert isinstance(exc, StarletteHTTPException)  # FastAPI raises Starlette's for this one
    await _pace_refusal(request, exc.status_code, exc.detail, exc.headers)
    extra = getattr(exc, "extra", None)  # deps.second_factor_required: what the client needs next
    if extra:
        return JSONResponse({"detail": exc.detail, **extra}, exc.status_code, headers=exc.headers)
    if getattr(exc, "challenge_required", False) or exc.status_code >= 500:
        body: dict[str, object] = {"detail": exc.detail}
        if getattr(exc, "challenge_required", False):  # a solved challenge would have got it in
            body["challenge_required"] = True
        if exc.status_code >= 500:  # a 5xx names its request, for the operator's logs
            body["request_id"] = logs.current_request_id()
        return JSONResponse(body, exc.status_code, headers=exc.headers)
    cause = exc.__cause__
    if exc.status_code != status.HTTP_400_BAD_REQUEST or exc.detail != BODY_PARSE_ERROR or cause is None:
        return await http_exception_handler(request, exc)
    if isinstance(cause, RequestValidationError):  # BodyLimit's UTF-16/32 refusal, raised while FastAPI read
        return await validation_error(request, cause)
    if isinstance(cause, UnicodeDecodeError):
        error = {"loc": ["body", cause.start], "type": "json_invalid",
                 "msg": f"The body is not valid UTF-8 (byte {cause.start}): send JSON encoded as UTF-8"}
    else:
        error = {"loc": ["body"], "type": "json_invalid", "msg": "The body could not be parsed as JSON"}
    return JSONResponse({"detail": [error]}, status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _pace_refusal(request: Request, status_code: int, detail: object, headers: dict[str, str] | None) -> None:
    """Paced per address and kind of refusal: a lockout's long Retry-After does not slow the
    same address's other refusals (nor the others behind the same NAT)."""
    early: EarlyRetries | None = getattr(request.app.state, "early_retries", None)
    if early is not None and headers and (retry_after := headers.get("Retry-After", "")).isdigit():
        await early.refuse(f"{client_address(request)} {status_code} {detail}", int(retry_after))


STORE_UNAVAILABLE_RETRY_AFTER = 1  # seconds; a database restart usually takes a few
_last_unavailable_log = -1.0


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is down or unreachable: a 503 the client may retry, never a 500. The log
    line names the kind of failure only (no connection string)."""
    global _last_unavailable_log
    await _pace_refusal(request, 503, "store", {"Retry-After": str(STORE_UNAVAILABLE_RETRY_AFTER)})
    if time.monotonic() - _last_unavailable_log >= 1:  # an outage under load: a line a second, not one a request
        _last_unavailable_log = time.monotonic()
        log.warning("store unavailable: %s", exc)
    return JSONResponse({"detail": "Database unavailable; try again shortly", "request_id": logs.current_request_id()},
                        status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(STORE_UNAVAILABLE_RETRY_AFTER)})


async def ready(request: Request) -> JSONResponse:
    """Readiness: the store answers (PostgreSQL reachable; the JSON store loaded). Unlike
    ``/health`` (liveness) it touches the store, so an orchestrator stops sending traffic to a
    process whose database is gone, without restarting it."""
    store: Store | None = getattr(request.app.state, "store", None)
    try:
        if store is None:
            raise StoreUnavailable("the store is not open")
        await asyncio.wait_for(store.ping(), READY_TIMEOUT_SECONDS)
    except (StoreUnavailable, TimeoutError):
        return JSONResponse({"detail": "Store unavailable", "request_id": logs.current_request_id()},
                            status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": str(STORE_UNAVAILABLE_RETRY_AFTER)})
    return JSONResponse({"status": "ready"})


class ReadyOut(BaseModel):
    status: str


class ReadyError(BaseModel):
    detail: str
    request_id: str


def config_errors(exc: ValidationError) -> str:
    """A settings error without the values that were refused: a rejected JWT_SECRET is still a secret."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg']}"
                     for e in exc.errors(include_input=False, include_url=False))


def swagger_ui_html(title: str, self_hosted: bool) -> str:
    """FastAPI's Swagger UI page, from our own files when the SPA build has them, else a CDN."""
    local = {"swagger_js_url": "/swagger/swagger-ui-bundle.js", "swagger_css_url": "/swagger/swagger-ui.css",
             "swagger_favicon_url": "/swagger/favicon-32x32.png"} if self_hosted else {}
    page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title} - Swagger UI", **local)
    return bytes(page.body).decode()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure(settings.log_format)
    swagger = settings.frontend_dir / "swagger"
    self_hosted_docs = (swagger / "swagger-ui-bundle.js").is_file()
    app = FastAPI(title="FARM auth", version="1.0.0", lifespan=lifespan, redoc_url=None, docs_url=None,
                  responses=COMMON_ERRORS,
                  description="JWT authentication over a durable JSON user store, with anonymous sessions.")
    app.state.settings = settings
    docs_html = swagger_ui_html(app.title, self_hosted_docs)
    headers, docs_headers = build_headers(settings.hsts_seconds, docs_html)
    app.add_middleware(BodyLimit)  # inside CORS, so a browser can read its 413
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                       allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])
    app.add_middleware(HeaderLimit)  # before anything reads a header
    app.add_middleware(SecurityHeaders, headers=headers, docs_headers=docs_headers,  # every answer gets
                       token_paths=TOKEN_PATHS)  # them, a 431 too
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    app.add_middleware(metrics.Observe, token=token,  # outermost: every answer has an X-Request-ID, is
                       enabled=settings.metrics_enabled)  # counted and logged; it answers /metrics itself
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreUnavailable, store_unavailable)

    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, str]:
        """Liveness: the process serves. It never touches the store (see ``/health/ready``)."""
        return {"status": "ok"}

    app.add_api_route("/health/ready", ready, methods=["GET"], tags=["meta"], response_model=ReadyOut, responses={
        200: {"description": "The store answers"},
        503: {"model": ReadyError, "description": "The store does not answer (the database is unreachable); "
              "see Retry-After"}})

    # Routes are tried in order and each miss costs microseconds: hot routes first.
    for router in (users.router, shop.router, personal.router, anonymous.router, factors.router, security.router,
                   admin.router):
        app.include_router(router)
    declare_body_limit(app)

    # Swagger UI's files from the SPA build (frontend/vite.config.ts), else a CDN; one fixed page,
    # so its inline start-up script has one hash, which /docs's Content-Security-Policy allows.
    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html)

    if (settings.frontend_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=settings.frontend_dir, html=True), name="spa")
    else:
        log.warning("%s/index.html not found: serving the API only (`make run` builds the SPA)",
                    settings.frontend_dir)
    return app


try:
    app = create_app()
except ValidationError as exc:
    log.error("Cannot start: invalid configuration: %s", config_errors(exc))
    sys.exit(3)  # uvicorn's "startup failed": a --workers supervisor stops instead of respawning
