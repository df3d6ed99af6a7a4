"""Account and browser hygiene (issue 14), through HTTP: change password, re-authenticated
deletion, the absolute session lifetime, safe usernames, normalised passwords, security headers,
422 for unparseable bodies, and no rejected secret in the start-up log."""

import base64
import hashlib
import re
import time
import unicodedata
from pathlib import Path

import pytest
from passlib.context import CryptContext

from conftest import SECRET, Client, bearer, make_settings, running, seed_store
from server import Server
from settings import Settings

pytestmark = pytest.mark.anyio

DIST = Path(__file__).resolve().parent.parent / "frontend" / "dist"
INVALID_LOGIN = {"detail": "Invalid username and/or password"}
JSON = {"Content-Type": "application/json"}


async def change_password(client: Client, token: str, current: str, new: str):
    return await client.post("/users/me/password", json={"current_password": current, "new_password": new},
                             headers=bearer(token))


async def delete_me(client: Client, token: str, body: object):
    return await client.request("DELETE", "/users/me", json=body, headers=bearer(token))


# -- change password ----------------------------------------------------------------------------


async def test_change_password_ends_every_other_session_and_keeps_this_one(client: Client) -> None:
    here = await client.session_for("marko")
    other = (await client.login("marko")).json()
    response = await change_password(client, here["token"], "password123", "new-password-42")
    assert response.status_code == 204 and response.content == b""

    assert (await client.get("/users/me", headers=bearer(here["token"]))).status_code == 200
    refreshed = await client.post("/users/refresh", json={"refresh_token": here["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text

    gone = await client.get("/users/me", headers=bearer(other["token"]))
    assert gone.status_code == 401 and gone.json() == {"detail": "Invalid token"}
    assert (await client.post("/users/refresh", json={"refresh_token": other["refresh_token"]})).status_code == 401

    assert (await client.login("marko", "password123")).json() == INVALID_LOGIN
    assert (await client.login("marko", "new-password-42")).status_code == 200


async def test_a_wrong_current_password_is_401_and_changes_nothing(client: Client) -> None:
    token = await client.token_for("marko")
    response = await change_password(client, token, "not-the-password", "new-password-42")
    assert response.status_code == 401 and response.json() == INVALID_LOGIN
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200
    assert (await client.login("marko")).status_code == 200


@pytest.mark.parametrize("body", [{}, {"current_password": "password123"}, {"new_password": "new-password-42"},
                                  {"current_password": "password123", "new_password": "short"},
                                  {"current_password": "password123", "new_password": "x" * 73}])
async def test_change_password_validates_its_body(client: Client, body: dict) -> None:
    token = await client.token_for("marko")
    response = await client.post("/users/me/password", json=body, headers=bearer(token))
    assert response.status_code == 422, response.text
    assert (await client.login("marko")).status_code == 200


async def test_change_password_needs_a_registered_account(client: Client) -> None:
    body = {"current_password": "password123", "new_password": "new-password-42"}
    assert (await client.post("/users/me/password", json=body)).status_code == 401
    response = await client.post("/users/me/password", json=body, headers=bearer(await client.anonymous()))
    assert response.status_code == 403


async def test_wrong_passwords_count_toward_the_login_lockout(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=3)):
        token = await client.token_for("marko")  # a successful login resets the count
        assert (await change_password(client, token, "wrong-1", "new-password-42")).status_code == 401
        assert (await delete_me(client, token, {"password": "wrong-2"})).status_code == 401
        assert (await client.login("marko", "wrong-3")).status_code == 401
        locked = await client.login("marko")
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        locked = await change_password(client, token, "password123", "new-password-42")
        assert locked.status_code == 429 and "retry-after" in locked.headers
        assert (await delete_me(client, token, {"password": "password123"})).status_code == 429


async def test_a_right_password_resets_the_count(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, login_max_failures=2)):
        token = await client.token_for("marko")
        assert (await change_password(client, token, "wrong-1", "new-password-42")).status_code == 401
        assert (await change_password(client, token, "password123", "new-password-42")).status_code == 204
        assert (await change_password(client, token, "wrong-2", "other-password-42")).status_code == 401
        assert (await client.login("marko", "new-password-42")).status_code == 200


# -- deleting the account asks for the password ----------------------------------------------


@pytest.mark.parametrize("body", [None, {}, {"password": ""}, {"pass": "password123"}])
async def test_delete_me_without_the_password_is_422(client: Client, body: object) -> None:
    token = await client.token_for("marko")
    response = await client.request("DELETE", "/users/me", headers=bearer(token),
                                     **({"json": body} if body is not None else {}))
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200


async def test_delete_me_with_a_wrong_password_is_401(client: Client) -> None:
    token = await client.token_for("marko")
    response = await delete_me(client, token, {"password": "not-the-password"})
    assert response.status_code == 401 and response.json() == INVALID_LOGIN
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200


async def test_delete_me_with_the_password_deletes(client: Client) -> None:
    token = await client.token_for("marko")
    assert (await delete_me(client, token, {"password": "password123"})).status_code == 204
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 401
    assert (await client.register("marko")).status_code == 201  # the name is free again


# -- absolute session lifetime -----------------------------------------------------------------


async def test_a_session_cannot_be_refreshed_past_session_max_days(tmp_path: Path) -> None:
    max_seconds = 0.5
    async for client in running(make_settings(tmp_path, session_max_days=max_seconds / 86400)):
        before = time.time()
        session = await client.session_for("marko")
        after = time.time()  # the session was created between `before` and now
        refreshed = await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})
        if time.time() - before < max_seconds:  # (a very slow run skips this half)
            assert refreshed.status_code == 200, refreshed.text
            session = refreshed.json()
        deadline = time.monotonic() + 10
        while time.time() - after <= max_seconds and time.monotonic() < deadline:
            time.sleep(0.05)
        late = await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})
        assert late.status_code == 401 and late.json() == {"detail": "Invalid token"}
        # The refresh token's own expiry (7 days) does not matter; a new login starts a new session.
        assert (await client.get("/users/me", headers=bearer(session["token"]))).status_code == 401
        assert (await client.login("marko")).status_code == 200


async def test_default_session_lifetime_allows_refreshes(client: Client) -> None:
    session = await client.session_for("marko")
    for _ in range(3):
        response = await client.post("/users/refresh", json={"refresh_token": session["refresh_token"]})
        assert response.status_code == 200
        session = response.json()


def write_store(settings: Settings, users: list[dict], sessions: dict | None = None) -> None:
    """A users.json as an earlier version of the service left it (the documented snapshot format);
    on PostgreSQL, that file imported."""
    seed_store(settings, {"users": users, "sessions": sessions or {}})


async def test_a_session_stored_without_created_at_is_not_refreshed(tmp_path: Path) -> None:
    """Its age is unknown: fail closed, the user logs in once more (docs/API-contract.md)."""
    from authentication import AuthHandler

    settings = make_settings(tmp_path)
    hashed = CryptContext(schemes=["bcrypt"], bcrypt__rounds=4).hash("password123")
    write_store(settings, [{"id": "u-1", "username": "old", "password": hashed}],
                {"s-1": {"user_id": "u-1", "jti": "j-1", "expires_at": time.time() + 3600}})
    auth = AuthHandler(SECRET, 4)
    refresh_token = auth.encode_refresh_token("u-1", "s-1", "j-1")
    access = auth.encode_token("u-1", "old", "s-1")
    auth.close()
    async for client in running(settings):
        assert (await client.get("/users/me", headers=bearer(access))).status_code == 200
        response = await client.post("/users/refresh", json={"refresh_token": refresh_token})
        assert response.status_code == 401
        assert (await client.login("old")).status_code == 200


# -- usernames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["marko", "Marko_1", "josé", "Ångström", "a.b-c", "ΑΘΗΝΑ", "漢字かな"])
async def test_ordinary_names_register(client: Client, name: str) -> None:
    response = await client.register(name)
    assert response.status_code == 201, response.text
    assert response.json()["username"] == name
    assert (await client.login(name)).status_code == 200


@pytest.mark.parametrize(("name", "why"), [
    ("\u0441arol", "must not mix scripts (Cyrillic, Latin)"),  # Cyrillic с
    ("car\u03bfl", "must not mix scripts (Greek, Latin)"),  # Greek ο
    ("carol\u3164", "invisible or filler"),  # Hangul filler
    ("\u3164\u3164\u3164", "invisible or filler"),
    ("caro\u200bl", "letters, digits"),  # zero-width space
])
async def test_look_alike_and_invisible_names_are_422(client: Client, name: str, why: str) -> None:
    assert (await client.register("carol")).status_code == 201
    response = await client.register(name)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "username"] and why in error["msg"]


async def test_uniqueness_is_on_the_normalised_name(client: Client) -> None:
    assert (await client.register("Marko")).status_code == 201
    for other in ("marko", "MARKO", "\uff4d\uff41\uff52\uff4b\uff4f"):  # fullwidth ｍａｒｋｏ
        assert (await client.register(other)).status_code in (409, 422)
    assert (await client.register("marko")).status_code == 409


async def test_accounts_made_under_the_old_rule_still_log_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    hashed = CryptContext(schemes=["bcrypt"], bcrypt__rounds=4).hash("password123")
    write_store(settings, [{"id": "u-1", "username": "\u0441arol", "password": hashed}])
    async for client in running(settings):
        response = await client.login("\u0441arol")
        assert response.status_code == 200, response.text
        me = await client.get("/users/me", headers=bearer(response.json()["token"]))
        assert me.json()["username"] == "\u0441arol"


# -- passwords are normalised ------------------------------------------------------------------


async def test_nfc_and_nfd_spellings_are_one_password(client: Client) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café-crème-42"), unicodedata.normalize("NFD", "café-crème-42")
    assert nfc != nfd
    assert (await client.register("marko", nfc)).status_code == 201
    assert (await client.login("marko", nfd)).status_code == 200
    assert (await client.login("marko", nfc)).status_code == 200
    token = await client.token_for("marko", nfd)
    assert (await change_password(client, token, nfd, "\uff50\uff41\uff53\uff53-word-1")).status_code == 204
    assert (await client.login("marko", "pass-word-1")).status_code == 200  # fullwidth: NFKC


async def test_a_hash_of_the_password_as_typed_still_verifies_and_is_rehashed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    nfd = unicodedata.normalize("NFD", "café-crème-42")
    nfc = unicodedata.normalize("NFC", nfd)
    legacy = CryptContext(schemes=["bcrypt"], bcrypt__rounds=4).hash(nfd)  # before normalisation
    write_store(settings, [{"id": "u-1", "username": "old", "password": legacy}])
    async for client in running(settings):
        assert (await client.login("old", nfc)).status_code == 401  # the old hash knows only the NFD form
        assert (await client.login("old", nfd)).status_code == 200  # as typed: verified, then rehashed
        assert (await client.login("old", nfc)).status_code == 200  # the new hash is of the NFKC form
        assert (await client.login("old", nfd)).status_code == 200


# -- security headers --------------------------------------------------------------------------

COMMON = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}
SPA_CSP = ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'",
           "base-uri 'none'"]


def directives(csp: str) -> dict[str, list[str]]:
    parts = [d.split() for d in csp.split(";") if d.strip()]
    return {p[0]: p[1:] for p in parts}


@pytest.fixture
async def spa_client(tmp_path: Path):
    assert (DIST / "index.html").is_file(), "build the SPA first (make test does)"
    async for client in running(make_settings(tmp_path, frontend_dir=DIST)):
        yield client


async def test_headers_on_the_spa_an_asset_docs_json_and_a_401(spa_client: Client) -> None:
    index = await spa_client.get("/")
    asset = re.search(r'src="(/assets/[^"]+\.js)"', index.text).group(1)  # type: ignore[union-attr]
    responses = {"/": index, asset: await spa_client.get(asset), "/docs": await spa_client.get("/docs"),
                 "/health": await spa_client.get("/health"), "401": await spa_client.get("/users/me")}
    assert responses["401"].status_code == 401
    for name, response in responses.items():
        assert response.status_code in (200, 401), name
        for header, value in COMMON.items():
            assert response.headers[header] == value, (name, header)
        assert "strict-transport-security" not in response.headers, name
        assert "cache-control" not in response.headers, name
        csp = response.headers["content-security-policy"]
        if name != "/docs":
            assert all(d in csp for d in SPA_CSP), (name, csp)
            assert "unsafe" not in csp, name


async def test_the_docs_policy_allows_swagger_uis_start_up_script_by_its_hash(spa_client: Client) -> None:
    docs = await spa_client.get("/docs")
    policy = directives(docs.headers["content-security-policy"])
    scripts = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert scripts, "Swagger UI's page starts with an inline script"
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts}
    assert hashes <= set(policy["script-src"])
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert '<script src="/swagger/swagger-ui-bundle.js">' in docs.text  # self-hosted, no CDN


async def test_without_the_spa_build_docs_allows_only_the_cdn_it_loads_from(client: Client) -> None:
    docs = await client.get("/docs")
    policy = directives(docs.headers["content-security-policy"])
    origins = set(re.findall(r'(?:src|href)="(https://[^/"]+)/', docs.text))
    assert origins and origins <= set(policy["script-src"]) & set(policy["style-src"]) & set(policy["img-src"])
    assert "'unsafe-inline'" not in policy["script-src"] and "*" not in policy["script-src"]
    assert any(source.startswith("'sha256-") for source in policy["script-src"])


async def test_the_built_spa_has_no_inline_script(spa_client: Client) -> None:
    index = (await spa_client.get("/")).text
    for attributes, content in re.findall(r"<script([^>]*)>(.*?)</script>", index, re.DOTALL):
        assert "src=" in attributes and not content.strip()
    assert not re.search(r"\son\w+=", index)  # no inline event handlers


async def test_hsts_only_when_configured(tmp_path: Path) -> None:
    async for client in running(make_settings(tmp_path, hsts_seconds=31536000)):
        for response in (await client.get("/health"), await client.get("/users/me"), await client.get("/docs")):
            assert response.headers["strict-transport-security"] == "max-age=31536000"


async def test_token_responses_are_not_stored(client: Client) -> None:
    registered = await client.register("marko")
    assert "cache-control" not in registered.headers  # no token in it
    login = await client.login("marko")
    refresh = await client.post("/users/refresh", json={"refresh_token": login.json()["refresh_token"]})
    anonymous = await client.post("/anonymous-login")
    failed = await client.login("marko", "wrong-password")
    for response in (login, refresh, anonymous, failed):
        assert response.headers["cache-control"] == "no-store", response.request.url
        assert response.headers["pragma"] == "no-cache"
        assert response.headers["x-frame-options"] == "DENY"
    assert login.status_code == refresh.status_code == anonymous.status_code == 200


# -- unparseable bodies are 422 ---------------------------------------------------------------

BROKEN = {
    "not UTF-8": (b'{"username": "\xff\xfe", "password": "password123"}', "not valid UTF-8"),
    "Latin-1": ('{"username": "marko", "password": "pässword123"}'.encode("latin-1"), "not valid UTF-8"),
    "bad JSON": (b'{"username": "marko",', "JSON decode error"),
    "not JSON": (b"not json", "JSON decode error: Expecting value"),
}


@pytest.mark.parametrize("kind", BROKEN)
async def test_unparseable_bodies_are_422_on_every_route_with_a_body(client: Client, kind: str) -> None:
    body, message = BROKEN[kind]
    spec = (await client.get("/openapi.json")).json()
    token = await client.token_for("marko")
    checked = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            url = path.replace("{item_id}", "1")
            response = await client.request(method, url, content=body, headers={**JSON, **bearer(token)})
            assert response.status_code == 422, (method, path, response.text)
            assert "422" in operation["responses"], (method, path)
            [error] = response.json()["detail"]
            assert set(error) == {"loc", "msg", "type"} and error["loc"][0] == "body"
            assert message in error["msg"], (method, path, error)
            checked.append(f"{method.upper()} {path}")
    assert {"POST /users/register", "POST /users/login", "POST /users/refresh", "POST /users/logout",
            "POST /users/me/password", "DELETE /users/me", "PUT /cart/items/{item_id}"} <= set(checked)
    assert (await client.get("/users/me", headers=bearer(token))).status_code == 200  # nothing deleted


# -- a rejected secret never reaches the log --------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_rejected_jwt_secret_is_not_in_the_start_up_output(tmp_path: Path, workers: int) -> None:
    secret = "short-Zq7xK"
    server = Server(tmp_path / "users.json", workers=workers, JWT_SECRET=secret).launch()
    try:
        server.wait_exit(30)
    finally:
        server.kill()
    output = server.stderr + server.stdout
    assert "JWT_SECRET must be at least 32 bytes" in output
    assert secret not in output and "input_value" not in output
