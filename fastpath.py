"""The fast path: routes written as FastAPI's documentation shows them, checked first and served
without FastAPI's per-request cost for the token check and for an included router.

Measured gain: bench row 1 (``/users/me`` ÷ ``/health``, same server, interleaved) is 0.84-0.92
with this module and 0.69-0.75 without it (plain ``app.include_router``, the check solved by
FastAPI) in the same runs: plain routes are 12-25 % slower and miss row 1's 0.85 target; each of
the two parts below is worth about a tenth of row 1 (bench/RESULTS.md, "Plain FastAPI routes",
has the four runs and their spreads). Measured with, from the repo root::

    .venv/bin/python bench/ab.py before=git:571a743 fastpath=. plain=DIR --reps 8 --duration 4

where DIR is this tree with the ``fastpath.apply(app)`` call in ``app.lifespan`` removed.

Nothing at the call sites: routers are plain ``APIRouter``s, handlers declare ``user:
CurrentUser`` (deps.py), ``create_app`` uses ``app.include_router``. ``apply(app)`` runs once as
the app starts (``app.lifespan``) and rewrites the app's route list:

1. Flat: FastAPI (>= 0.137) keeps each included router as a node of the app's routes and matches
   a request to one of its routes twice, once at the node and once inside (~20 us per request
   here). Each node made only of API routes is replaced by copies of its routes, built from
   FastAPI's own merged view of them (the include's prefix, tags, dependencies and responses),
   so OpenAPI and ``dependency_overrides`` are unchanged.
2. Checks first: a route whose ``async def`` handler takes a ``CurrentUser``/``CurrentIdentity``
   (``deps.BearerIdentity``) runs that check in ``handle()``, before FastAPI reads the body or
   the parameters (so a request without a valid token is a 401/403, never a 422), and gives
   FastAPI's solver a copy of the route's dependant without the check's node (FastAPI spends
   ~20 us per request on a dependency node, whatever it does). OpenAPI, and so Swagger UI's
   Authorize button, read the whole dependant, which stays as it is. A sync or generator handler,
   a check inside another dependency, and an app whose ``dependency_overrides`` replace a check
   keep FastAPI's own handling, where the check finds the caller ``handle()`` already found.

It uses FastAPI internals (``fastapi.routing._IncludedRouter``, ``iter_route_contexts``,
``APIRoute.get_route_handler``), pinned by tests/test_identity_route.py and the token tests. If
an upgrade breaks them, deleting this module and its one call leaves a correct app: the same
routes, answers and OpenAPI, slower, and with a 422 for a malformed body sent without a token.
"""

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import replace
from functools import wraps
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.datastructures import Default
from fastapi.routing import APIRoute, _IncludedRouter, iter_route_contexts, request_response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from deps import IDENTITY_KEY, BearerIdentity

# Everything APIRoute(...) takes, read back from a route (or FastAPI's view of an included one).
_ROUTE_OPTIONS = [name for name in inspect.signature(APIRoute.__init__).parameters
                  if name not in ("self", "path", "endpoint")]


class CheckFirstRoute(APIRoute):
    """An ``APIRoute`` that runs its ``BearerIdentity`` checks itself, first (point 2 above)."""

    _checks: tuple[BearerIdentity, ...] = ()
    _solved_app: ASGIApp | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        whole = self.dependant
        checks = [d for d in whole.dependencies if isinstance(d.call, BearerIdentity)]
        self._checks = tuple({id(d.call): d.call for d in checks}.values())  # type: ignore[misc]
        endpoint = whole.call
        if not checks or not inspect.iscoroutinefunction(endpoint):
            return super().get_route_handler()
        named = [d.name for d in checks if d.name]
        request_name = whole.request_param_name or "_identity_request"
        keep_request = whole.request_param_name is not None

        @wraps(endpoint)  # FastAPI's error messages and telemetry name the endpoint, not this
        async def call(**values: Any) -> Any:
            request: Request = values[request_name] if keep_request else values.pop(request_name)
            for name in named:
                values[name] = request.scope.get(IDENTITY_KEY)  # handle() has run every check
            return await endpoint(**values)

        self.dependant = replace(whole, call=call, request_param_name=request_name,
                                 dependencies=[d for d in whole.dependencies if d not in checks])
        try:  # synchronous: nothing else sees the copy
            return super().get_route_handler()
        finally:
            self.dependant = whole

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._checks or scope["method"] not in self.methods:
            return await super().handle(scope, receive, send)
        overrides = getattr(self.dependency_overrides_provider, "dependency_overrides", None)
        if overrides and any(c in overrides for c in self._checks):
            if self._solved_app is None:
                self._solved_app = request_response(APIRoute.get_route_handler(self))
            return await self._solved_app(scope, receive, send)
        for check in self._checks:  # 401/403 before the body or parameters are read
            await check.identify(scope)
        await super().handle(scope, receive, send)


def _check_first(route: Any) -> CheckFirstRoute:
    """A ``CheckFirstRoute`` with every option of ``route`` (an ``APIRoute``, or FastAPI's context
    for one seen through its include)."""
    options = {name: getattr(route, name) for name in _ROUTE_OPTIONS}
    if route.stream_item_type is not None:  # a generator's: FastAPI finds it again from the annotation
        options["response_model"] = Default(None)
    return CheckFirstRoute(route.path, route.endpoint, **options)


def _flattened(node: _IncludedRouter) -> list[BaseRoute] | None:
    """The routes ``node`` stands for, or None when it holds anything but API routes (websockets,
    mounts, frontend routes keep FastAPI's own handling)."""
    contexts = list(iter_route_contexts([node]))
    if node.effective_low_priority_routes() or any(type(c.original_route) is not APIRoute for c in contexts):
        return None
    return [_check_first(context) for context in contexts]


def apply(app: FastAPI) -> None:
    """Rewrite ``app``'s routes as above; routes already rewritten, and routes of any other class
    (a route class of the app's own), are left as they are. Before the app serves a request."""
    routes: list[BaseRoute] = []
    for route in app.router.routes:
        if isinstance(route, _IncludedRouter):
            routes.extend(_flattened(route) or [route])
        elif type(route) is APIRoute:
            routes.append(_check_first(route))
        else:
            routes.append(route)
    app.router.routes[:] = routes
    app.router._mark_routes_changed()
