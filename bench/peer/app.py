"""The comparison peer: a minimal, idiomatic fastapi-users service.

It is what a reader of fastapi-users' documentation would build for the same
job as ours (register, log in with a JWT bearer token, read ``/users/me``), with
SQLite through aiosqlite as the store. Nothing here is tuned: the point of the
peer is to be the ordinary way, so that "ours ÷ peer" tells how our design
compares with it on the same machine, in the same run.

Settings (environment):
    PEER_DATABASE_URL   SQLAlchemy URL, default ``sqlite+aiosqlite:///./peer.db``
    PEER_JWT_SECRET     HS256 secret (the harness passes a random one)
    PEER_TOKEN_LIFETIME access token lifetime in seconds, default 3600

Routes: ``POST /auth/register`` (JSON ``{"email", "password"}``),
``POST /auth/jwt/login`` (form ``username=<email>&password=...``),
``GET /users/me`` (Bearer), ``GET /health``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import (
    AuthenticationBackend,
    BearerTransport,
    JWTStrategy,
)
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

DATABASE_URL = os.environ.get("PEER_DATABASE_URL", "sqlite+aiosqlite:///./peer.db")
SECRET = os.environ.get("PEER_JWT_SECRET", "change-me-" + "x" * 40)
TOKEN_LIFETIME = int(os.environ.get("PEER_TOKEN_LIFETIME", "3600"))


# --- database -------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    """fastapi-users' stock user table (id, email, hashed_password, flags)."""


engine = create_async_engine(DATABASE_URL)
session_maker = async_sessionmaker(engine, expire_on_commit=False)


async def create_db_and_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
    async with session_maker() as session:
        yield session


async def get_user_db(
    session: AsyncSession = Depends(get_async_session),
) -> AsyncGenerator[SQLAlchemyUserDatabase, None]:
    yield SQLAlchemyUserDatabase(session, User)


# --- schemas ----------------------------------------------------------------


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


# --- users and authentication -------------------------------------------------


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    # The default password helper (pwdlib: argon2 first, bcrypt accepted) is
    # kept on purpose: it is what a fastapi-users user gets.
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def get_user_manager(
    user_db: SQLAlchemyUserDatabase = Depends(get_user_db),
) -> AsyncGenerator[UserManager, None]:
    yield UserManager(user_db)


bearer_transport = BearerTransport(tokenUrl="auth/jwt/login")


def get_jwt_strategy() -> JWTStrategy:
    return JWTStrategy(secret=SECRET, lifetime_seconds=TOKEN_LIFETIME)


auth_backend = AuthenticationBackend(
    name="jwt", transport=bearer_transport, get_strategy=get_jwt_strategy
)

fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])


# --- application --------------------------------------------------------------


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncGenerator[None, None]:
    await create_db_and_tables()
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt", tags=["auth"])
app.include_router(
    fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"]
)
app.include_router(
    fastapi_users.get_users_router(UserRead, UserUpdate), prefix="/users", tags=["users"]
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
