"""Bad input gets a clear 4xx, never a 500, and never changes the store."""

import pytest

from conftest import Client, bearer

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
BODIES = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b"null",
    b'"marko"',
    b'{"username": 5, "password": "password123"}',
    b'{"username": "marko", "password": 12345678}',
    b'{"username": ["marko"], "password": "password123"}',
    b'{"username": "marko"}',
    b'{"username": "marko", "password": "password123", "admin": true}',
    b'{"username": "mar\\u0000ko", "password": "password123"}',
    b'{"username": "marko", "password": "pass\\u0000word123"}',
    b'{"username": "\\ud800abc", "password": "password123"}',
    b'{"username": "\xff\xfe", "password": "password123"}',
    b'{"username": "' + "\u202e\u0301".encode() * 3 + b'", "password": "password123"}',
    b'{"username": "marko", "password": "password123"' + b" " * 10 + b"}}",
]


@pytest.mark.parametrize("path", ["/users/register", "/users/login", "/users/refresh"])
@pytest.mark.parametrize("body", BODIES)
async def test_malformed_bodies_are_4xx(client: Client, path: str, body: bytes) -> None:
    response = await client.post(path, content=body, headers=JSON)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert "detail" in response.json()


async def test_a_huge_body_is_413(client: Client) -> None:
    body = b'{"username": "marko", "password": "' + b"x" * (1 << 20) + b'"}'
    response = await client.post("/users/register", content=body, headers=JSON)
    assert response.status_code == 413 and response.json() == {"detail": "Request body too large"}


async def test_every_operation_that_takes_a_body_declares_413(client: Client) -> None:
    """BodyLimit answers 413 to any method but GET/HEAD/OPTIONS: OpenAPI says so (Schemathesis
    never sends 64 KiB, so it would not notice an undeclared one)."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    with_body = {(m, p): op["responses"] for p, ops in paths.items() for m, op in ops.items() if m != "get"}
    assert len(with_body) >= 14 and all("413" in responses for responses in with_body.values()), with_body
    assert all(r["413"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Message"}
               for r in with_body.values())
    assert not any("413" in op["responses"] for ops in paths.values() for m, op in ops.items() if m == "get")


async def test_a_huge_streamed_body_is_413(client: Client) -> None:
    async def chunks():
        for _ in range(64):
            yield b"x" * 16384

    response = await client.post("/users/register", content=chunks(), headers=JSON)
    assert response.status_code == 413


async def test_long_token_under_the_header_limit_is_401(client: Client) -> None:
    response = await client.get("/users/me", headers=bearer("x" * 15000))
    assert response.status_code == 401


async def test_headers_over_16_kib_are_431_before_any_work(client: Client) -> None:
    for headers in ({"Authorization": "Bearer " + "x" * 17000},  # one huge header
                    {f"x-filler-{i}": "y" * 1000 for i in range(17)}):  # many that add up
        for method, path in (("GET", "/users/me"), ("GET", "/health"), ("POST", "/users/login")):
            response = await client.request(method, path, headers=headers, json={"username": "a", "password": "b"})
            assert response.status_code == 431, (method, path)
            assert response.json() == {"detail": "Request headers too large"}
    assert (await client.get("/health", headers={"x-filler": "y" * 15000})).status_code == 200


async def test_nothing_bad_reached_the_store(client: Client) -> None:
    for body in BODIES:
        await client.post("/users/register", content=body, headers=JSON)
    token = await client.token_for("checker")
    assert [u["username"] for u in (await client.get("/users/list", headers=bearer(token))).json()["users"]] == ["checker"]


async def test_wrong_methods_and_paths(client: Client) -> None:
    assert (await client.get("/users/register")).status_code == 405
    assert (await client.get("/no-such-route")).status_code == 404


async def test_cors_preflight_from_the_spa_dev_server(client: Client) -> None:
    response = await client.options("/users/login", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    refused = await client.options("/users/login", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in refused.headers


async def test_a_413_carries_cors_headers_so_the_spa_can_read_it(client: Client) -> None:
    response = await client.post("/users/register", content=b"x" * (128 * 1024),
                                 headers={**JSON, "Origin": "http://localhost:5173"})
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
