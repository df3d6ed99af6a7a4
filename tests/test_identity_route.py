"""fastpath.py with route shapes the service itself does not use, but a copier's routes will
(plain ``APIRouter``s, included after ``create_app`` as a user's own would be): each must behave
as FastAPI would with the plain dependency, check the token once, and before the body."""

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, Request, Security
from pydantic import BaseModel

from app import create_app
from conftest import Client, bearer, running
from deps import CurrentIdentity, CurrentUser
from settings import Settings

pytestmark = pytest.mark.anyio

router = APIRouter(prefix="/x")


@router.get("/sync")
def sync_endpoint(user: CurrentUser) -> dict[str, str | None]:
    return {"username": user.username}


@router.get("/request")
async def with_request(request: Request, user: CurrentUser) -> dict[str, str | None]:
    return {"username": user.username, "path": request.url.path}


@router.get("/both")
async def both_checks(user: CurrentUser, identity: CurrentIdentity) -> dict[str, bool]:
    return {"same": user is identity}


async def owner(identity: CurrentIdentity) -> str:
    return identity.id


@router.get("/nested")
async def nested(user: CurrentUser, owner_id: Annotated[str, Depends(owner)]) -> dict[str, bool]:
    return {"same": user.id == owner_id}


@router.get("/unnamed", dependencies=[next(iter(CurrentUser.__metadata__))])
async def unnamed() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/stream")
async def stream(user: CurrentUser) -> AsyncIterator[dict[str, str | None]]:
    yield {"username": user.username}


class Note(BaseModel):
    text: str


@router.post("/notes", status_code=201)
async def add_note(note: Note, user: CurrentUser) -> dict[str, str | None]:
    return {"text": note.text, "username": user.username}


gated = APIRouter(dependencies=[Security(CurrentIdentity.__metadata__[0].dependency)])


@gated.get("/gated")
async def gated_route() -> dict[str, str]:
    return {"status": "ok"}


@pytest.fixture
async def client(settings) -> AsyncIterator[Client]:  # type: ignore[no-untyped-def]
    async for c in running(settings, routers=(router, gated)):
        yield c


@pytest.mark.parametrize("path", ["/x/sync", "/x/request", "/x/both", "/x/nested", "/x/unnamed", "/x/stream", "/gated"])
async def test_route_shapes(client: Client, path: str) -> None:
    token = await client.token_for("marko")
    anonymous = await client.anonymous()
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers=bearer("forged"))).status_code == 401
    assert (await client.get(path, headers=bearer(anonymous))).status_code == (200 if path == "/gated" else 403)
    response = await client.get(path, headers=bearer(token))
    assert response.status_code == 200, response.text
    expected = {
        "/x/sync": {"username": "marko"},
        "/x/request": {"username": "marko", "path": "/x/request"},
        "/x/both": {"same": True},
        "/x/nested": {"same": True},
        "/x/unnamed": {"status": "ok"},
        "/gated": {"status": "ok"},
    }
    if path == "/x/stream":
        assert response.text.strip() == '{"username":"marko"}'
    else:
        assert response.json() == expected[path]


async def test_the_token_is_decoded_once_per_request(client: Client) -> None:
    token = await client.token_for("marko")
    auth = client.app.state.auth  # type: ignore[attr-defined]
    calls = []
    decode = auth.decode_token
    auth.decode_token = lambda *a, **k: calls.append(a) or decode(*a, **k)
    try:
        for path in ("/users/me", "/x/both", "/x/nested", "/x/stream"):
            calls.clear()
            assert (await client.get(path, headers=bearer(token))).status_code == 200
            assert len(calls) == 1, path
    finally:
        del auth.decode_token


async def test_a_body_is_read_after_the_check(client: Client) -> None:
    """A copier's route with a body: no token is a 401 and an anonymous one a 403, even with a
    body FastAPI could not parse; with the right token the same body is the 422."""
    token, anonymous = await client.token_for("marko"), await client.anonymous()
    broken = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    assert (await client.post("/x/notes", **broken)).status_code == 401
    assert (await client.post("/x/notes", content=b"{not json", headers={
        **broken["headers"], **bearer(anonymous)})).status_code == 403
    assert (await client.post("/x/notes", content=b"{not json", headers={
        **broken["headers"], **bearer(token)})).status_code == 422
    response = await client.post("/x/notes", json={"text": "hi"}, headers=bearer(token))
    assert response.status_code == 201 and response.json() == {"text": "hi", "username": "marko"}


async def test_include_options_survive_and_every_route_is_flat(settings: Settings) -> None:
    """``include_router``'s own prefix, tags and responses still apply once the app has started,
    in OpenAPI and on the wire; and no included router is left for FastAPI to match twice."""
    app = create_app(settings)
    app.include_router(router, prefix="/v2", tags=["v2"], responses={418: {"description": "teapot"}})
    before = app.openapi()["paths"]["/v2/x/notes"]["post"]
    app.openapi_schema = None  # built again below, from the rewritten routes
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), Client(transport=transport, base_url="http://test") as client:
        assert {type(r).__name__ for r in app.router.routes} == {"Route", "CheckFirstRoute"}  # Route: /openapi.json
        token = await client.token_for("marko")
        broken = await client.post("/v2/x/notes", content=b"{", headers={"Content-Type": "application/json"})
        assert broken.status_code == 401
        response = await client.post("/v2/x/notes", json={"text": "hi"}, headers=bearer(token))
        assert response.status_code == 201, response.text
        after = app.openapi()["paths"]["/v2/x/notes"]["post"]
    assert after == before and after["tags"] == ["v2"] and {"413", "418", "422"} <= set(after["responses"])
