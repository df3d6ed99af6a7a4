"""Forged, tampered, expired and confused tokens are all 401 with a useful detail."""

import base64
import json
import time

import jwt
import pytest

from conftest import SECRET, Client, assert_account, bearer
from store import User

pytestmark = pytest.mark.anyio


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def assert_invalid(client: Client, token: str, detail: str = "Invalid token") -> None:
    response = await client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401, token
    assert response.json() == {"detail": detail}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_access_token_claims(client: Client) -> None:
    token = await client.token_for("marko", "marko123")
    header = jwt.get_unverified_header(token)
    claims = claims_of(token)
    assert header["alg"] == "HS256"
    assert claims["username"] == "marko" and isinstance(claims["sub"], str) and claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] == 30 * 60


async def test_tampered_payload(client: Client) -> None:
    token = await client.token_for("marko")
    await client.register("admin", "password123")
    header, _, signature = token.split(".")
    claims = claims_of(token) | {"username": "admin"}
    await assert_invalid(client, f"{header}.{b64(claims)}.{signature}")


async def test_wrong_key(client: Client) -> None:
    claims = claims_of(await client.token_for("marko"))
    await assert_invalid(client, jwt.encode(claims, "another-secret-that-is-long-enough-0123456789", "HS256"))


async def test_alg_none(client: Client) -> None:
    claims = claims_of(await client.token_for("marko"))
    await assert_invalid(client, f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.")


async def test_other_algorithm_with_the_right_key(client: Client) -> None:
    claims = claims_of(await client.token_for("marko"))
    await assert_invalid(client, jwt.encode(claims, SECRET, "HS512"))


@pytest.mark.parametrize("missing", ["exp", "iat", "sub"])
async def test_missing_required_claim(client: Client, missing: str) -> None:
    claims = claims_of(await client.token_for("marko"))
    del claims[missing]
    await assert_invalid(client, jwt.encode(claims, SECRET, "HS256"))


async def test_expired_token(client: Client) -> None:
    claims = claims_of(await client.token_for("marko"))
    claims |= {"iat": int(time.time()) - 3600, "exp": int(time.time()) - 10}
    await assert_invalid(client, jwt.encode(claims, SECRET, "HS256"), "Signature has expired")


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "ey.ey.ey", "Bearer", "x" * 5000, "é"])
async def test_garbage(client: Client, garbage: str) -> None:
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {garbage}".encode()})
    assert response.status_code == 401


async def test_non_bearer_scheme_is_not_authenticated(client: Client) -> None:
    response = await client.get("/users/me", headers={"Authorization": "Basic bWFya286bWFya28xMjM="})
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}


async def test_dict_subject_from_the_book_is_refused(client: Client) -> None:
    """The book put a dict in ``sub``; such a token must not be accepted (nor crash PyJWT)."""
    claims = claims_of(await client.token_for("marko"))
    token = jwt.api_jws.encode(json.dumps(claims | {"sub": {"user_id": claims["sub"]}}).encode(), SECRET, "HS256")
    await assert_invalid(client, token)


async def test_refresh_token_is_not_an_access_token(client: Client) -> None:
    refresh = (await client.session_for("marko"))["refresh_token"]
    await assert_invalid(client, refresh)


async def test_access_token_is_not_a_refresh_token(client: Client) -> None:
    token = await client.token_for("marko")
    response = await client.post("/users/refresh", json={"refresh_token": token})
    assert response.status_code == 401


async def test_token_of_a_deleted_user(client: Client) -> None:
    token = await client.token_for("marko")
    store = client.app.state.store  # type: ignore[attr-defined]
    user = await store.find_user("marko")
    assert await store.delete_user(user.id)
    await assert_invalid(client, token)


async def test_swagger_ui_and_openapi_declare_bearer(client: Client) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {"HTTPBearer": {"type": "http", "scheme": "bearer", "description": schemes["HTTPBearer"]["description"]}}
    me = spec["paths"]["/users/me"]["get"]
    assert me["security"] == [{"HTTPBearer": []}]
    assert {"200", "401", "403"} <= set(me["responses"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"] or "201" in operation["responses"] or "204" in operation["responses"], (path, method)


# where a visitor's token is optional (its data merges into the account): no token is no 401
VISITOR_TOKEN_OPTIONAL = ("/users/register", "/users/login", "/users/login/passkey", "/users/login/mfa")


async def test_every_route_that_declares_bearer_checks_it_first(client: Client) -> None:
    """What OpenAPI promises is what the routes do: without a token, every operation marked with
    the scheme (except where a visitor's token is optional: register and the logins) is a 401, even with a
    body that would be a 422, and a wrong method is still a 405."""
    spec = (await client.get("/openapi.json")).json()
    checked = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") != [{"HTTPBearer": []}] or path in VISITOR_TOKEN_OPTIONAL:
                continue
            url = path.replace("{item_id}", "not-a-number")
            response = await client.request(method, url, content=b"{not json", headers={"Content-Type": "application/json"})
            assert response.status_code == 401, (method, path, response.text)
            assert response.json() == {"detail": "Not authenticated"}
            checked.append(f"{method.upper()} {path}")
    assert {"GET /users/me", "GET /users/list", "DELETE /users/me", "PUT /cart/items/{item_id}"} <= set(checked)
    assert (await client.patch("/users/me")).status_code == 405
    token = await client.token_for("marko")
    response = await client.put("/cart/items/1", content=b"{not json", headers={**bearer(token), "Content-Type": "application/json"})
    assert response.status_code == 422


async def test_every_403_for_an_anonymous_token_is_declared(client: Client) -> None:
    """Each operation that refuses a visitor's token says so in OpenAPI (it once did not, for logout)."""
    spec = (await client.get("/openapi.json")).json()
    refused = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") != [{"HTTPBearer": []}] or path in VISITOR_TOKEN_OPTIONAL:
                continue
            url = path.replace("{item_id}", "1")
            response = await client.request(method, url, headers=bearer(await client.anonymous()))
            if response.status_code == 403:
                assert "403" in operation["responses"], (method, path)
                refused.append(f"{method.upper()} {path}")
    assert {"GET /users/me", "POST /users/logout", "POST /users/logout-all", "GET /users/me/data"} <= set(refused)


async def test_dependency_overrides_still_replace_the_check(client: Client) -> None:
    """Users' own tests often swap ``CurrentUser`` out; fastpath.py must not get in the way."""
    from deps import BearerIdentity, CurrentUser, Identity

    check = next(m for m in CurrentUser.__metadata__ if isinstance(m.dependency, BearerIdentity)).dependency
    app = client.app  # type: ignore[attr-defined]
    assert (await client.get("/users/me")).status_code == 401
    app.dependency_overrides[check] = lambda: Identity("u-1", User("u-1", "stand-in", ""), "s-1")
    try:
        response = await client.get("/users/me")
        assert response.status_code == 200
        assert_account(response.json(), "stand-in", "u-1", own=True)
    finally:
        app.dependency_overrides.clear()
    assert (await client.get("/users/me")).status_code == 401
