"""IdentityRoute with route shapes the service itself does not use, but a copier's routes will:
each must behave as FastAPI would with the plain dependency, and check the token once."""

from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, Request, Security

from conftest import Client, bearer, running
from deps import CurrentIdentity, CurrentUser, IdentityRoute

pytestmark = pytest.mark.anyio

router = APIRouter(prefix="/x", route_class=IdentityRoute)


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


gated = APIRouter(route_class=IdentityRoute, dependencies=[Security(CurrentIdentity.__metadata__[0].dependency)])


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
