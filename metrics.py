"""Prometheus metrics: their definitions, the per-request middleware, ``GET /metrics`` and the
helpers that turn an answer into an outcome label.

Why here, in one module: the flows (``accounts.py``, the routers, the stores) stay free of metric
plumbing; each records what happened with one call (``metrics.record_login(...)``), and what the
labels may be is decided in this file only, so no request can grow a label set (a route's
template, never its raw path; a method outside the known few is ``other``).

Several workers (``uvicorn --workers N``): with ``PROMETHEUS_MULTIPROC_DIR`` set (``make run``
and the tests set it up, empty, before starting uvicorn) each worker writes its figures to
memory-mapped files in that directory and ``/metrics`` sums them, so the answer is the service's,
whichever worker serves it. Without it (one process, the ASGI tests) the figures live in memory.
In multiprocess mode the client library cannot sum ``process_*``/``python_*`` over processes, so
they are given in single-process mode only.
"""

import hmac
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
if MULTIPROC_DIR:  # before the client library is imported: it picks its value store then
    Path(MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import logs
from admission import OTHER

T = TypeVar("T")
METRICS_PATH = "/metrics"
UNMATCHED = "<unmatched>"  # the route label of every path no route answers (a scan adds no label)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered, by route template and status",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram("http_request_duration_seconds", "Time from a request's arrival to its last byte",
                          ["method", "route"], buckets=FAST)
LOGINS = Counter("auth_logins_total", "POST /users/login answers, by outcome", ["outcome"])
REGISTRATIONS = Counter("auth_registrations_total", "POST /users/register answers, by outcome", ["outcome"])
REFRESHES = Counter("auth_refresh_total", "POST /users/refresh answers, by outcome", ["outcome"])
SESSIONS_ENDED = Counter("auth_sessions_ended_total", "Login sessions ended, by reason", ["reason"])
HASH_QUEUE = Gauge("auth_hash_queue_depth", "Password hashes waiting for a bcrypt thread", multiprocess_mode="livesum")
HASH_WAIT = Histogram("auth_hash_wait_seconds", "Time a password hash waited for a bcrypt thread", buckets=SLOW)
HASH_SECONDS = Histogram("auth_hash_seconds", "Time a password hash took on its thread", buckets=SLOW)
STORE_COMMIT = Histogram("store_commit_seconds", "Time a store transaction took, to durable", buckets=FAST)
CACHE_REQUESTS = Counter("store_cache_requests_total", "PostgreSQL per-process cache lookups", ["result"])
NOTIFY_LAG = Histogram("store_notify_lag_seconds", "PostgreSQL: commit of a revocation to this process hearing it",
                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))

for _outcome in ("success", "bad_credentials", "locked", "throttled", "shed", "challenge_required"):
    LOGINS.labels(_outcome)  # every known outcome shows from the start, at 0: rate() needs a first sample
for _outcome in ("created", "taken", "throttled", "shed", "challenge_required"):
    REGISTRATIONS.labels(_outcome)
for _outcome in ("rotated", "grace", "reuse_detected", "invalid"):
    REFRESHES.labels(_outcome)
for _reason in ("logout", "logout_all", "password_change", "account_deleted", "reuse_detected", "session_ended",
                "admin"):
    SESSIONS_ENDED.labels(_reason)
for _result in ("hit", "miss"):
    CACHE_REQUESTS.labels(_result)


# -- outcomes -------------------------------------------------------------------------------------

def refusal_outcome(exc: BaseException) -> str:
    """The outcome label of a refused login or registration, from the HTTPException it raised:
    401 a wrong password, 429 a lockout or an address over its budget (told apart by the
    exception's ``outcome``), 503 the hashing queue's bound (or the database down). A refusal that asks for proof
    of work carries ``challenge_required`` (issue 18) and is counted as that, whatever its status."""
    if getattr(exc, "challenge_required", False):
        return "challenge_required"
    code = getattr(exc, "status_code", 500)
    if code == 401:
        return "bad_credentials"
    if code == 403:  # the password was right; a second factor completes the login (POST /users/login/mfa)
        return "second_factor_required"
    if code == 409:
        return "taken"
    if code == 429:  # deps.too_many_requests says which
        return getattr(exc, "outcome", "throttled")
    if code == 503:
        return "shed"
    return "error"


def record_login(outcome: str) -> None:
    LOGINS.labels(outcome).inc()


def record_registration(outcome: str) -> None:
    REGISTRATIONS.labels(outcome).inc()


def record_refresh(outcome: str) -> None:
    REFRESHES.labels(outcome).inc()


def session_ended(reason: str, count: int = 1) -> None:
    SESSIONS_ENDED.labels(reason).inc(count)


def cache_lookup(hit: bool) -> None:
    CACHE_REQUESTS.labels("hit" if hit else "miss").inc()


def commit_took(started: float) -> None:
    """A store transaction begun at ``started`` (``time.perf_counter()``) is durable now."""
    STORE_COMMIT.observe(time.perf_counter() - started)


def notify_heard(sent: float) -> None:
    """A NOTIFY sent at ``sent`` (the sender's ``time.time()``: hosts' clocks must agree) arrived."""
    NOTIFY_LAG.observe(max(0.0, time.time() - sent))


async def timed_hash(gate: Any, client: str, watch: Any, fn: Callable[..., T], *args: Any, priority: int = OTHER) -> T:
    """``gate.run(client, watch, fn, *args)`` (``admission.HashGate``), measured: the wait for a
    bcrypt thread, the hash itself, and the queue's depth as it changes."""
    queued = time.perf_counter()

    def job(*a: Any) -> T:
        started = time.perf_counter()
        HASH_WAIT.observe(started - queued)
        HASH_QUEUE.set(gate.waiting)
        try:
            return fn(*a)
        finally:
            HASH_SECONDS.observe(time.perf_counter() - started)

    try:
        return await gate.run(client, watch, job, *args, priority=priority)
    finally:
        HASH_QUEUE.set(gate.waiting)


# -- the middleware and /metrics ------------------------------------------------------------------

def route_label(scope: Scope) -> str:
    """The template of the route that answered (``/items/{item_id}``), or ``UNMATCHED``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None or path == "":  # no route, or the SPA's mount at "/" (every other path)
        return UNMATCHED
    return path


class Observe:
    """Pure-ASGI middleware, outermost: gives each request its id (``logs.request_id``), answers
    ``X-Request-ID``, counts and times the request under its route's template, and writes its
    access-log line. ``/metrics`` itself is answered here, before any of that: it is neither
    counted nor timed, nor in the OpenAPI schema."""

    def __init__(self, app: ASGIApp, token: str | None = None, enabled: bool = True) -> None:
        self.app, self.token, self.enabled = app, token, enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.enabled and scope["path"] == METRICS_PATH:
            return await self.metrics(scope, send)
        started = time.perf_counter()
        rid = logs.request_id_of(scope)
        token = logs.REQUEST_ID.set(rid)
        status = 0
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # A bug: a JSON 500 that names the request and nothing of the failure; re-raised, so
            # uvicorn still logs the traceback (Starlette's own 500 answer would carry no id).
            logs.log.error("unhandled %s; answered 500", type(exc).__name__)
            if not status:
                body = b'{"detail":"Internal Server Error","request_id":"' + rid.encode() + b'"}'
                await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            raise
        finally:
            status = status or 500
            took = time.perf_counter() - started
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_label(scope)
            if self.enabled:
                HTTP_REQUESTS.labels(method, route, str(status)).inc()
                HTTP_DURATION.labels(method, route).observe(took)
            logs.access(scope, method, route, status, took, rid)
            logs.REQUEST_ID.reset(token)

    async def metrics(self, scope: Scope, send: Send) -> None:
        """The figures, to whom may read them: with ``METRICS_TOKEN`` the bearer of it (401 for
        anyone else), without one only a client on loopback (404 for others: nothing to see)."""
        code, body, ctype = 200, b"", CONTENT_TYPE_LATEST
        headers: list[tuple[bytes, bytes]] = []
        if self.token is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token.encode()):
                code, body, ctype = 401, b'{"detail":"Not authenticated"}', "application/json"
                headers.append((b"www-authenticate", b"Bearer"))
        elif not _loopback(scope):
            code, body, ctype = 404, b'{"detail":"Not Found"}', "application/json"
        if code == 200:
            body = generate_latest(_registry())
        headers += [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    host = client[0] if client else ""
    return host == "::1" or host.startswith("127.") or host == "::ffff:127.0.0.1"


def _registry() -> CollectorRegistry:
    if not MULTIPROC_DIR:
        return REGISTRY
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry)
    return registry


def forget_dead_workers() -> None:
    """Drop the gauge files of processes that are gone (a worker killed and respawned): a gauge
    is the sum over live workers. Counters and histograms of the dead stay: they happened."""
    if not MULTIPROC_DIR:
        return
    for path in Path(MULTIPROC_DIR).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1]) if path.stem.rsplit("_", 1)[1].isdigit() else 0
        if pid and not _alive(pid):
            _multiprocess.mark_process_dead(pid)


def worker_stopped() -> None:
    """A clean stop: this worker's gauges no longer count."""
    if MULTIPROC_DIR:
        with suppress(OSError):
            _multiprocess.mark_process_dead(os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
