"""Security headers on every response, added by a pure-ASGI middleware from precomputed bytes.

The SPA keeps its tokens in ``localStorage``, so the pages that hold them must resist script
injection and framing. Every response gets ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY`` and a ``Content-Security-Policy``:
the SPA's strict one (``script-src 'self'``: the Vite build has no inline script), or on ``/docs``
one that lets Swagger UI's inline start-up script run by its hash, never ``'unsafe-inline'``.
``Strict-Transport-Security`` only when ``HSTS_SECONDS`` is set (plain HTTP stays usable locally).
Responses that carry a token also get ``Cache-Control: no-store`` and ``Pragma: no-cache``.

The header values are built once with the ``secure`` library and kept as byte tuples: per
response the middleware only extends the header list (no ``BaseHTTPMiddleware``, which costs a
task and a stream per request; ``/users/me`` is benchmarked against ``/health``).
"""

import base64
import hashlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from secure import Secure
from secure.headers import (
    ContentSecurityPolicy,
    ReferrerPolicy,
    StrictTransportSecurity,
    XContentTypeOptions,
    XFrameOptions,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Headers = tuple[tuple[bytes, bytes], ...]
NO_STORE: Headers = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _policy(script_src: Iterable[str] = (), style_src: Iterable[str] = (),
            img_src: Iterable[str] = ()) -> ContentSecurityPolicy:
    """The SPA's policy, widened by ``script_src``/``style_src``/``img_src`` (Swagger UI's needs)."""
    return (ContentSecurityPolicy()
            .default_src("'self'")
            .script_src("'self'", *script_src)
            .style_src("'self'", *style_src)
            .img_src("'self'", "data:", *img_src)  # the SPA's favicon and Swagger UI's icons are data: URLs
            .frame_ancestors("'none'")
            .object_src("'none'")
            .base_uri("'none'"))


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) for each inline ``<script>`` of ``html``."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
            for s in _INLINE_SCRIPT.findall(html)]


def _as_bytes(secure: Secure) -> Headers:
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in secure.headers.items())


def build_headers(hsts_seconds: int | None, docs_html: str | None = None) -> tuple[Headers, Headers]:
    """(headers for every response, headers for ``/docs``), from the settings and the docs page."""
    common = {"xcto": XContentTypeOptions().nosniff(), "referrer": ReferrerPolicy().no_referrer(),
              "xfo": XFrameOptions().deny()}
    if hsts_seconds is not None:
        common["hsts"] = StrictTransportSecurity().max_age(hsts_seconds)
    spa = _as_bytes(Secure(csp=_policy(), **common))  # type: ignore[arg-type]
    docs_sources: list[str] = []
    if docs_html:  # Swagger UI's files may come from a CDN when the SPA is not built
        docs_sources = sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, re.findall(
            r'(?:src|href)="(https?://[^"]+)"', docs_html))})
    docs_policy = _policy([*inline_script_hashes(docs_html or ""), *docs_sources],
                          ["'unsafe-inline'", *docs_sources], docs_sources)  # Swagger UI styles elements inline
    docs = _as_bytes(Secure(csp=docs_policy, **common))  # type: ignore[arg-type]
    return spa, docs


class SecurityHeaders:
    """Add ``headers`` to every HTTP response, ``docs_headers`` instead on ``docs_path``, and
    ``NO_STORE`` on ``token_paths`` and on every answer to a request with ``Authorization``: what
    answers a token is the caller's own (account data, cart, history), never for a cache."""

    def __init__(self, app: ASGIApp, headers: Headers, docs_headers: Headers, docs_path: str = "/docs",
                 token_paths: Iterable[str] = ()) -> None:
        self.app, self.headers, self.docs_headers, self.docs_path = app, headers, docs_headers, docs_path
        self.token_paths = frozenset(token_paths)
        self.token_headers = headers + NO_STORE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        extra = (self.token_headers if path in self.token_paths or any(n == b"authorization" for n, _ in scope["headers"])
                 else self.docs_headers if path == self.docs_path else self.headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
