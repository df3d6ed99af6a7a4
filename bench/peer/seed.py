"""Fill the peer's SQLite database with N users, fast.

Registering N users through the API would cost N password hashes; instead the
hash is made ONCE with fastapi-users' own default password helper (so the peer
logs in with its default hasher, argon2, and never re-hashes on login) and the
rows are bulk-inserted into fastapi-users' stock user table.

Run with the peer venv's python, in bench/peer, with PEER_DATABASE_URL set:
    python seed.py --users 1000 --password benchpass123
Users are ``user000001@example.com`` ... (the same numbering as ours).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from fastapi_users.password import PasswordHelper
from sqlalchemy import insert

from app import Base, User, engine


def email_of(i: int) -> str:
    """The peer's login name for user number ``i`` (1-based)."""
    return f"user{i:06d}@example.com"


async def seed(n_users: int, password: str) -> None:
    hashed = PasswordHelper().hash(password)
    rows = [
        {
            "id": uuid.uuid4(),
            "email": email_of(i),
            "hashed_password": hashed,
            "is_active": True,
            "is_superuser": False,
            "is_verified": True,
        }
        for i in range(1, n_users + 1)
    ]
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        for start in range(0, len(rows), 10_000):
            await conn.execute(insert(User), rows[start : start + 10_000])
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()
    asyncio.run(seed(args.users, args.password))


if __name__ == "__main__":
    main()
