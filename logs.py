"""Logging: request ids, the access log, and ``LOG_FORMAT`` (``text`` or ``json``).

Why it is the app's and not uvicorn's: uvicorn's access line knows neither the route nor the
request id nor how long the request took, and it is written after the fact by the server, where
the id is gone. So the app writes the access line itself (``metrics.Observe`` calls ``access``)
and silences uvicorn's: one line per request, never two.

- ``uvicorn app:app`` (or ``make run``): our access lines go where uvicorn's would have (its
  ``uvicorn.access`` handlers, stdout by default, with whatever ``--log-config`` gave them), and
  uvicorn's own stop. ``--no-access-log`` leaves no handler there: then there is no access log.
- ``LOG_FORMAT=json``: every handler of the process (uvicorn's, ours, the root's) writes one JSON
  object a line, ``{"time", "level", "logger", "message", "pid", "request_id"?, ...}``; access
  lines add ``method``, ``route``, ``status``, ``duration_ms``, ``client``. With ``--workers`` the
  supervisor process never imports the app, so its own few lines (start, stop) stay uvicorn's text.
- Request ids: the client's ``X-Request-ID`` when sane (1–64 of ``[A-Za-z0-9._-]``), else a fresh
  one; kept in a context variable for the request's task, so every log line written while serving
  it carries it, and the 5xx bodies (``app.py``) too.

What never reaches a log line: no header, no query string, no body. Messages are the code's own.
"""

import json
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

from starlette.types import Scope

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
ACCESS = logging.getLogger("farm.access")
log = logging.getLogger("uvicorn.error")  # the app's other lines go where uvicorn's own do
_state: dict[str, Any] = {"configured": None, "access": False}


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if sane, else a fresh 16-hex-digit one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SANE_ID.fullmatch(value):
                return value.decode()
            break
    return os.urandom(8).hex()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def access(scope: Scope, method: str, route: str, status: int, seconds: float, request_id: str) -> None:
    """One access-log line for an answered request (when the access log is on)."""
    if not _state["access"]:
        return
    client = scope.get("client")
    addr = f"{client[0]}:{client[1]}" if client else "-"
    # The message keeps uvicorn's shape (client - "METHOD route HTTP/x" status), so log tools and
    # greps written for it still work; the route's template stands for the path (no query string).
    ACCESS.info('%s - "%s %s HTTP/%s" %d', addr, method, route, scope.get("http_version", "1.1"), status,
                extra={"request_id": request_id, "method": method, "route": route, "status": status,
                       "duration_ms": round(seconds * 1000, 3), "client": client[0] if client else None})


class JsonFormatter(logging.Formatter):
    """One JSON object a line. The message is rendered by ``getMessage`` (uvicorn's access records
    have args it formats); the fields an access line adds are taken from the record."""

    FIELDS = ("method", "route", "status", "duration_ms", "client")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid:
            doc["request_id"] = rid
        for field in self.FIELDS:
            if (value := getattr(record, field, None)) is not None:
                doc[field] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextAccessFormatter(logging.Formatter):
    """The handler's own formatter (uvicorn's, or a ``--log-config``'s), then the duration and the
    request id: ``INFO:  127.0.0.1:5000 - "GET /users/me HTTP/1.1" 200 1.2 ms id=9f…``."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__("%(levelname)s: %(message)s")
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record) if self.inner is not None else super().format(record)
        return f"{line} {getattr(record, 'duration_ms', 0):.1f} ms id={getattr(record, 'request_id', '-')}"


def configure(log_format: str) -> None:
    """Take over the access log from uvicorn and apply ``log_format``; once per process (the
    tests build many apps in one), since the first call moves uvicorn's access handlers away."""
    if _state["configured"] == log_format:
        return
    uvicorn_access = logging.getLogger("uvicorn.access")
    if _state["configured"] is None:
        handlers = list(uvicorn_access.handlers)
        _state["access"] = bool(handlers)  # none: --no-access-log, or no uvicorn at all
        ACCESS.handlers = handlers
        ACCESS.setLevel(uvicorn_access.level or logging.INFO)
        ACCESS.propagate = False
        uvicorn_access.handlers = []
        uvicorn_access.propagate = False  # uvicorn checks hasHandlers() per connection: it stops
        if log_format == "text":
            for handler in ACCESS.handlers:
                handler.setFormatter(TextAccessFormatter(handler.formatter))
    _state["configured"] = log_format
    if log_format == "json":
        formatter = JsonFormatter()
        root = logging.getLogger()
        if not root.handlers:  # libraries' warnings (asyncpg, …) get a line of the same kind
            root.addHandler(logging.StreamHandler(sys.stderr))
        for name in ("", "uvicorn", "uvicorn.error", "farm.access"):
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(formatter)
