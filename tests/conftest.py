"""Shared fixtures: the real app over HTTP (httpx against ASGI, lifespan included)."""

import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter

from app import create_app, include_flat
from settings import Settings

SECRET = secrets.token_urlsafe(48)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "users_file": tmp_path / "users.json",
        "jwt_secret": SECRET,
        "bcrypt_rounds": 4,
        "login_rate_limit": 0,  # one test client registers and logs in many times from one address;
        "register_rate_limit": 0,  # tests/test_abuse.py checks these limits
        "frontend_dir": tmp_path / "no-frontend",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


class Client(httpx.AsyncClient):
    """An httpx client bound to a running app, with the calls every test needs."""

    app: object

    async def register(self, username: str, password: str = "password123", token: str | None = None) -> httpx.Response:
        return await self.post("/users/register", json={"username": username, "password": password},
                               headers=bearer(token) if token else None)

    async def login(self, username: str, password: str = "password123", token: str | None = None) -> httpx.Response:
        return await self.post("/users/login", json={"username": username, "password": password},
                               headers=bearer(token) if token else None)

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


async def running(settings: Settings, routers: Iterable[APIRouter] = ()) -> AsyncIterator[Client]:
    """The app on ``settings`` (plus ``routers``, added as app.py adds its own), lifespan and all."""
    app = create_app(settings)
    for router in routers:
        include_flat(app, router)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), Client(transport=transport, base_url="http://test") as client:
        client.app = app
        yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async for c in running(settings):
        yield c
