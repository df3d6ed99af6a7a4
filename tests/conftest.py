"""Shared fixtures: the real app over HTTP (httpx against ASGI, lifespan included), on both backends.

Every test that builds the app's settings (the ``settings``/``client`` fixtures, or ``make_settings``
/ ``running`` in its body) runs twice: ``[json]`` on the JSON file in its tmp dir, ``[postgres]`` on
a throw-away PostgreSQL database (tests/pg_support.py): one per store directory a test names, so
``make_settings(tmp_path)`` twice in one test reopens the same store, as a restart does. Tests of
the JSON file itself (its journal, its format, a corrupt file) carry ``@pytest.mark.json_only``.
"""

import base64
import hashlib
import inspect
import json
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import httpx
import pg_support
import pytest
from fastapi import APIRouter

from app import create_app
from settings import Settings

SECRET = secrets.token_urlsafe(48)
BACKENDS = ("json", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "json_only: a test of the JSON file store itself, not run on PostgreSQL")


def _builds_the_app(metafunc: pytest.Metafunc) -> bool:
    if "settings" in metafunc.fixturenames:
        return True
    try:
        source = inspect.getsource(metafunc.function)
    except (OSError, TypeError):
        return False
    return "make_settings(" in source or "running(" in source


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backend`` over both stores for every test that builds the app, unless it is json_only."""
    if ("backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("json_only") is None
            and "databases" not in metafunc.fixturenames  # a test that picks its databases itself
            and _builds_the_app(metafunc)):
        metafunc.parametrize("backend", BACKENDS)


@pytest.fixture
def backend() -> str:
    """The store this test runs on (``json`` unless pytest_generate_tests parametrised it)."""
    return "json"


class Databases:
    """The PostgreSQL databases of one test: one per store directory, a copy of the template made on
    first use (taken from the spares made ahead), all dropped after the test."""

    def __init__(self, spares: pg_support.Spares) -> None:
        self.spares = spares
        self.urls: dict[str, str] = {}

    def url_for(self, directory: Path) -> str:
        key = str(Path(directory).resolve())
        if key not in self.urls:
            self.urls[key] = self.spares.take()
        return self.urls[key]

    def unmigrated(self) -> str:
        """An empty database without the schema (the app migrates it at start-up)."""
        url = pg_support.create_database()
        self.urls[url] = url
        return url

    def drop_all(self) -> None:
        for url in self.urls.values():
            self.spares.give_back(url)


_databases: Databases | None = None  # the running test's, when it runs on PostgreSQL


@pytest.fixture(scope="session")
def pg_spares() -> Iterator[pg_support.Spares]:
    """This session's migrated template database, and copies of it made ahead. Unreachable
    PostgreSQL fails the test (no skip)."""
    try:
        name = pg_support.create_template()
    except pg_support.DatabaseError as exc:
        pytest.fail(str(exc), pytrace=False)
    spares = pg_support.Spares(name)
    yield spares
    spares.close()
    pg_support.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def databases(pg_spares: pg_support.Spares) -> Iterator[Databases]:
    """Throw-away databases for a test that asks for them itself (e.g. real-process tests)."""
    dbs = Databases(pg_spares)
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(autouse=True)
def _store_backend(backend: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """On ``[postgres]``, make_settings points each store directory at its own database."""
    global _databases
    if backend != "postgres":
        yield
        return
    _databases = request.getfixturevalue("databases")
    try:
        yield
    finally:
        _databases = None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def solve(challenge: dict) -> str:
    """The ALTCHA payload (base64 JSON) that solves ``challenge``, found by brute force like a browser."""
    salt, target = challenge["salt"], challenge["challenge"]
    for number in range(challenge["maxNumber"] + 1):
        if hashlib.sha256(f"{salt}{number}".encode()).hexdigest() == target:
            payload = {k: challenge[k] for k in ("algorithm", "challenge", "salt", "signature")}
            return base64.b64encode(json.dumps({**payload, "number": number}).encode()).decode()
    raise AssertionError("the challenge has no solution up to maxNumber")


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "users_file": tmp_path / "users.json",
        "jwt_secret": SECRET,
        "bcrypt_rounds": 4,
        "login_rate_limit": 0,  # one test client registers and logs in many times from one address,
        "register_rate_limit": 0,  # often dozens at once; tests/test_abuse.py checks these limits
        "hash_queue_max_wait_seconds": 0,  # and the hashing queue's bound (test_abuse, test_flood)
        "early_retry_delay_seconds": 0,  # and the pacing of early retries after a 429
        "challenge_max_number": 5000,  # a solution in milliseconds (tests/test_trust.py solves many)
        "frontend_dir": tmp_path / "no-frontend",
        **overrides,
    }
    if "database_url" not in overrides:  # [postgres]: this directory's database; [json]: none, whatever the env says
        values["database_url"] = _databases.url_for(tmp_path) if _databases is not None else None
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def seed_store(settings: Settings, document: dict) -> None:
    """Start ``settings``' store from ``document`` (a users.json as an earlier version or the book left
    it): the file itself on JSON; on PostgreSQL that file imported by ``python -m store.pg_tools import-json``,
    as an operator moving in would do it."""
    settings.users_file.parent.mkdir(parents=True, exist_ok=True)
    settings.users_file.write_text(json.dumps(document))
    if settings.database_url is not None:
        pg_support.import_json(settings.users_file, settings.database_url.get_secret_value())
        settings.users_file.unlink()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


class Client(httpx.AsyncClient):
    """An httpx client bound to a running app, with the calls every test needs."""

    app: object

    async def register(self, username: str, password: str = "password123", token: str | None = None) -> httpx.Response:
        return await self.post("/users/register", json={"username": username, "password": password},
                               headers=bearer(token) if token else None)

    async def login(self, username: str, password: str = "password123", token: str | None = None,
                    **fields: str) -> httpx.Response:
        """``fields``: more of the login body (``device_token``, ``altcha``)."""
        return await self.post("/users/login", json={"username": username, "password": password, **fields},
                               headers=bearer(token) if token else None)

    async def solve_challenge(self) -> str:
        """A solution of a fresh ``GET /challenge``, as a browser's ALTCHA solver would send it."""
        response = await self.get("/challenge")
        assert response.status_code == 200, response.text
        return solve(response.json())

    async def session_for(self, username: str, password: str = "password123") -> dict:
        """Register (if needed) and log in; the login answer (access and refresh token)."""
        await self.register(username, password)
        response = await self.login(username, password)
        assert response.status_code == 200, response.text
        return response.json()

    async def token_for(self, username: str, password: str = "password123") -> str:
        return (await self.session_for(username, password))["token"]

    async def anonymous(self) -> str:
        response = await self.post("/anonymous-login")
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# The whole shapes of the answers many tests read, pinned here once: a field added to one of them
# is one edit here, not one per test that happens to compare a whole body.

OWN_FIELDS = {"is_admin", "disabled", "created_at", "last_login_at"}  # what only its owner (and admins) see


def assert_account(body: object, username: str, id: str | None = None, own: bool = False) -> None:
    """An account as the API shows it: ``POST /users/register`` and each entry of ``GET /users/list``;
    with ``own``, as its owner sees it (``GET /users/me``, the export's ``profile``; ``AccountOut``)."""
    assert isinstance(body, dict) and set(body) == {"id", "username"} | (OWN_FIELDS if own else set()), body
    assert body["username"] == username, body
    assert isinstance(body["id"], str) and body["id"] and body["id"] == (id or body["id"]), body
    if own:
        assert isinstance(body["is_admin"], bool) and isinstance(body["disabled"], bool), body
        assert all(body[k] is None or isinstance(body[k], float) for k in ("created_at", "last_login_at")), body


def assert_login_answer(body: object, expires_in: int = 30 * 60) -> None:
    """``POST /users/login``'s 200: the access and refresh tokens, and the device token."""
    assert isinstance(body, dict) and set(body) == {"token", "token_type", "expires_in", "refresh_token",
                                                    "device_token"}, body
    _assert_tokens(body, expires_in)
    assert body["device_token"].startswith("dt1."), body


def assert_refresh_answer(body: object, expires_in: int = 30 * 60) -> None:
    """``POST /users/refresh``'s 200: the login's tokens without the device token."""
    assert isinstance(body, dict) and set(body) == {"token", "token_type", "expires_in", "refresh_token"}, body
    _assert_tokens(body, expires_in)


def _assert_tokens(body: dict, expires_in: int) -> None:
    assert body["token_type"] == "bearer" and body["expires_in"] == expires_in, body
    assert body["token"].count(".") == 2 and body["refresh_token"].count(".") == 2, body


def assert_export(body: object, username: str) -> None:
    """``GET /users/me/data``: everything kept about the account, and nothing else."""
    assert isinstance(body, dict) and set(body) == {"profile", "cart", "history", "favourites", "preferences",
                                                    "sessions", "totp_enabled", "passkeys"}, body
    assert_account(body["profile"], username, own=True)
    assert isinstance(body["totp_enabled"], bool), body
    assert all(set(p) == {"id", "name", "created_at", "last_used_at"} for p in body["passkeys"]), body
    assert set(body["preferences"]) == {"sort", "theme"}, body
    assert all(set(s) == {"id", "created_at", "expires_at", "current"} for s in body["sessions"]), body


async def running(settings: Settings, routers: Iterable[APIRouter] = ()) -> AsyncIterator[Client]:
    """The app on ``settings`` (plus ``routers``, added as app.py adds its own), lifespan and all."""
    app = create_app(settings)
    for router in routers:
        app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), Client(transport=transport, base_url="http://test") as client:
        client.app = app
        yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async for c in running(settings):
        yield c
