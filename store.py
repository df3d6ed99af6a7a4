"""What the service keeps: users, anonymous visitors, carts, login sessions and throttling counters.

Routes talk to the async ``Store`` protocol only, so another backend (a database) can replace
``JsonStore`` without touching them. ``JsonStore`` serves reads from memory (by id and by
normalised username) and makes every change durable through ``journal.JournaledTables`` before it
returns; each method that changes something is one transaction, checked under the cross-worker
lock, so e.g. one username has one winner across all workers.
"""

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from authentication import ANONYMOUS_PREFIX
from journal import Change, JournaledTables, StoreError
from models import MAX_QUANTITY, normalize_username

__all__ = ["JsonStore", "RateLimited", "Store", "StoreError", "UnknownOwner", "User", "UsernameTaken"]

TABLES = ("users", "anonymous", "carts", "sessions", "login_failures", "anonymous_logins")
ACTIVITY_GRANULARITY = 60.0  # seconds: record an anonymous visitor's activity at most this often


class UsernameTaken(Exception):
    pass


class UnknownOwner(Exception):
    """The cart's owner is gone (an upgraded or purged visitor, a deleted account)."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    password: str


class Store(Protocol):
    def refresh(self) -> None: ...
    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def find_user(self, username: str) -> User | None: ...
    async def list_users(self) -> list[User]: ...
    async def delete_user(self, user_id: str) -> bool: ...
    async def add_anonymous(self, client: str, limit_per_hour: int) -> str: ...
    async def anonymous_exists(self, anonymous_id: str) -> bool: ...
    async def touch_anonymous(self, anonymous_id: str) -> None: ...
    async def purge_anonymous(self, idle_seconds: float) -> int: ...
    async def get_cart(self, owner: str) -> dict[int, int]: ...
    async def set_cart_item(self, owner: str, item_id: int, quantity: int) -> dict[int, int]: ...
    async def remove_cart_item(self, owner: str, item_id: int) -> dict[int, int]: ...
    async def begin_login(self, username: str, max_failures: int, window: float) -> None: ...
    async def complete_login(self, user: User, refresh_jti: str, expires_at: float,
                             merge_from: str | None = None) -> str: ...
    async def set_password(self, user_id: str, password_hash: str) -> None: ...
    async def session_user(self, session_id: str, user_id: str) -> User | None: ...
    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, max_age: float | None = None) -> bool: ...
    async def end_session(self, session_id: str) -> None: ...
    async def end_all_sessions(self, user_id: str) -> None: ...
    async def change_password(self, user_id: str, password_hash: str, keep_session: str | None) -> bool: ...
    async def reset_login_failures(self, username: str) -> None: ...
    async def prune(self) -> None: ...


def _legacy_id(doc: dict[str, Any]) -> str:
    """The key of a user in the snapshot; a book-era entry without ``id`` gets a stable one."""
    if "id" in doc and doc["id"] is not None:
        return str(doc["id"])
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + normalize_username(str(doc["username"]))))


class JsonStore:
    def __init__(self, path: Path) -> None:
        self._by_name: dict[str, str] = {}
        self._users: dict[str, User] = {}
        self._db = JournaledTables(path, TABLES, self._index, self._reset_index, list_key=_legacy_id)

    @property
    def t(self) -> dict[str, dict[str, Any]]:
        return self._db.tables

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        self._db.open()

    async def drain(self) -> None:
        await self._db.drain()

    def close(self) -> None:
        self._db.close()

    def refresh(self) -> None:
        self._db.refresh()

    def _reset_index(self) -> None:
        self._by_name.clear()
        self._users.clear()

    def _index(self, table: str, key: str, old: Any, new: Any) -> None:
        if table != "users":
            return
        if old is not None:
            name = normalize_username(str(old["username"]))
            if self._by_name.get(name) == key:
                del self._by_name[name]
            self._users.pop(key, None)
        if new is not None:
            username, password = new["username"], new["password"]
            if not isinstance(username, str) or not isinstance(password, str):
                raise TypeError("username and password must be strings")
            name = normalize_username(username)
            if self._by_name.get(name, key) != key:
                raise ValueError(f"duplicate username {username!r}")
            self._by_name[name] = key
            self._users[key] = User(key, username, password)

    async def _transact(self, fn: Any) -> Any:
        return await self._db.transact(fn)

    # -- users ---------------------------------------------------------------------------------

    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User:
        def tx() -> tuple[User, list[Change]]:
            if normalize_username(username) in self._by_name:
                raise UsernameTaken(username)
            user_id = str(uuid.uuid4())
            doc = {"id": user_id, "username": username, "password": password_hash}
            changes: list[Change] = [("users", user_id, doc)]
            if merge_from:
                changes += self._merge_changes(merge_from, user_id)
            return User(user_id, username, password_hash), changes

        return await self._transact(tx)

    async def get_user(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    async def find_user(self, username: str) -> User | None:
        user_id = self._by_name.get(normalize_username(username))
        return self._users.get(user_id) if user_id else None

    async def list_users(self) -> list[User]:
        return list(self._users.values())

    async def delete_user(self, user_id: str) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            if user_id not in self._users:
                return False, []
            changes: list[Change] = [("users", user_id, None)]
            if user_id in self.t["carts"]:
                changes.append(("carts", user_id, None))
            changes += [("sessions", sid, None) for sid, s in self.t["sessions"].items() if s["user_id"] == user_id]
            return True, changes

        return await self._transact(tx)

    # -- anonymous visitors --------------------------------------------------------------------

    async def add_anonymous(self, client: str, limit_per_hour: int) -> str:
        """Create a visitor identity, counting it against ``client``'s hourly allowance."""
        def tx() -> tuple[str, list[Change]]:
            now = time.time()
            changes: list[Change] = []
            if limit_per_hour:
                key = hashlib.sha256(client.encode()).hexdigest()[:32]
                window = self.t["anonymous_logins"].get(key)
                if window is None or now - window["since"] >= 3600:
                    window = {"since": now, "count": 0}
                if window["count"] >= limit_per_hour:
                    raise RateLimited(window["since"] + 3600 - now)
                changes.append(("anonymous_logins", key, {"since": window["since"], "count": window["count"] + 1}))
            anonymous_id = ANONYMOUS_PREFIX + str(uuid.uuid4())
            changes.append(("anonymous", anonymous_id, {"created_at": now, "last_active_at": now}))
            return anonymous_id, changes

        return await self._transact(tx)

    async def anonymous_exists(self, anonymous_id: str) -> bool:
        return anonymous_id in self.t["anonymous"]

    async def touch_anonymous(self, anonymous_id: str) -> None:
        entry = self.t["anonymous"].get(anonymous_id)
        if entry is None or time.time() - entry["last_active_at"] < ACTIVITY_GRANULARITY:
            return

        def tx() -> tuple[None, list[Change]]:
            current = self.t["anonymous"].get(anonymous_id)
            if current is None:
                return None, []
            return None, [("anonymous", anonymous_id, {**current, "last_active_at": time.time()})]

        await self._transact(tx)

    async def purge_anonymous(self, idle_seconds: float) -> int:
        def tx() -> tuple[int, list[Change]]:
            cutoff = time.time() - idle_seconds
            idle = [k for k, v in self.t["anonymous"].items() if v["last_active_at"] < cutoff]
            changes: list[Change] = [("anonymous", k, None) for k in idle]
            changes += [("carts", k, None) for k in idle if k in self.t["carts"]]
            return len(idle), changes

        return await self._transact(tx)

    # -- carts ---------------------------------------------------------------------------------

    async def get_cart(self, owner: str) -> dict[int, int]:
        return {int(k): v for k, v in self.t["carts"].get(owner, {}).items()}

    def _check_owner(self, owner: str) -> None:
        """Under the lock: a visitor upgraded or purged since its token was checked owns nothing."""
        if owner not in self.t["anonymous"] and owner not in self._users:
            raise UnknownOwner(owner)

    async def set_cart_item(self, owner: str, item_id: int, quantity: int) -> dict[int, int]:
        def tx() -> tuple[None, list[Change]]:
            self._check_owner(owner)
            cart = {**self.t["carts"].get(owner, {}), str(item_id): quantity}
            return None, [("carts", owner, cart)]

        await self._transact(tx)
        return await self.get_cart(owner)

    async def remove_cart_item(self, owner: str, item_id: int) -> dict[int, int]:
        """Raises ``KeyError`` when the item is not in the cart."""
        def tx() -> tuple[None, list[Change]]:
            self._check_owner(owner)
            cart = dict(self.t["carts"].get(owner, {}))
            del cart[str(item_id)]
            return None, [("carts", owner, cart or None)]

        await self._transact(tx)
        return await self.get_cart(owner)

    def _merge_changes(self, anonymous_id: str, user_id: str) -> list[Change]:
        if anonymous_id not in self.t["anonymous"]:
            return []
        merged = dict(self.t["carts"].get(user_id, {}))
        for item, quantity in self.t["carts"].get(anonymous_id, {}).items():
            merged[item] = min(merged.get(item, 0) + quantity, MAX_QUANTITY)
        changes: list[Change] = [("anonymous", anonymous_id, None)]
        if anonymous_id in self.t["carts"]:
            changes += [("carts", anonymous_id, None), ("carts", user_id, merged)]
        return changes

    # -- login sessions (a refresh-token family) -----------------------------------------------

    async def session_user(self, session_id: str, user_id: str) -> User | None:
        """The account behind a live login session; ``None`` once logged out or deleted."""
        session = self.t["sessions"].get(session_id)
        return self._users.get(user_id) if session is not None and session["user_id"] == user_id else None

    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, max_age: float | None = None) -> bool:
        """Swap the session's refresh token. A spent one (reuse: stolen) ends the session, and so
        does a session older than ``max_age`` seconds. A session stored before sessions recorded
        ``created_at`` has an unknown age: it is treated as too old (fail closed; its user logs
        in once more)."""
        def tx() -> tuple[bool, list[Change]]:
            session = self.t["sessions"].get(session_id)
            if session is None or session["user_id"] != user_id or user_id not in self._users:
                return False, []
            if session["jti"] != old_jti:
                return False, [("sessions", session_id, None)]
            if max_age is not None and time.time() - session.get("created_at", float("-inf")) > max_age:
                return False, [("sessions", session_id, None)]
            return True, [("sessions", session_id, {**session, "jti": new_jti, "expires_at": expires_at})]

        return await self._transact(tx)

    async def end_session(self, session_id: str) -> None:
        await self._transact(lambda: (None, [("sessions", session_id, None)] if session_id in self.t["sessions"] else []))

    async def end_all_sessions(self, user_id: str) -> None:
        def tx() -> tuple[None, list[Change]]:
            return None, [("sessions", sid, None) for sid, s in self.t["sessions"].items() if s["user_id"] == user_id]

        await self._transact(tx)

    async def change_password(self, user_id: str, password_hash: str, keep_session: str | None) -> bool:
        """One transaction: the new hash, and every other login session of the account ends
        (``keep_session``, the caller's, stays). False if the account is gone."""
        def tx() -> tuple[bool, list[Change]]:
            doc = self.t["users"].get(user_id)
            if doc is None:
                return False, []
            changes: list[Change] = [("users", user_id, {**doc, "password": password_hash})]
            changes += [("sessions", sid, None) for sid, s in self.t["sessions"].items()
                        if s["user_id"] == user_id and sid != keep_session]
            return True, changes

        return await self._transact(tx)

    async def prune(self) -> None:
        """Drop what has expired: sessions, throttling windows."""
        def tx() -> tuple[None, list[Change]]:
            now = time.time()
            changes: list[Change] = [("sessions", k, None) for k, v in self.t["sessions"].items() if v["expires_at"] < now]
            changes += [("login_failures", k, None) for k, v in self.t["login_failures"].items() if v["until"] < now]
            changes += [("anonymous_logins", k, None) for k, v in self.t["anonymous_logins"].items()
                        if now - v["since"] >= 3600]
            return None, changes

        await self._transact(tx)

    # -- logging in: brute-force throttling, then a session ---------------------------------

    async def begin_login(self, username: str, max_failures: int, window: float) -> None:
        """Count the attempt before the password is checked, so concurrent guesses cannot slip
        past the limit; raises ``RateLimited`` once ``username`` has used its attempts. Unknown
        usernames count the same way, so a 429 does not tell whether an account exists."""
        key = normalize_username(username)

        def tx() -> tuple[None, list[Change]]:
            now = time.time()
            entry = self.t["login_failures"].get(key)
            if entry is None or entry["until"] < now:
                entry = {"count": 0, "until": now + window}
            if entry["count"] >= max_failures:
                raise RateLimited(entry["until"] - now)
            return None, [("login_failures", key, {"count": entry["count"] + 1, "until": entry["until"]})]

        await self._transact(tx)

    async def complete_login(self, user: User, refresh_jti: str, expires_at: float,
                             merge_from: str | None = None) -> str:
        """One transaction: reset the attempts, move a visitor's cart in, start a session."""
        session_id = uuid.uuid4().hex

        def tx() -> tuple[str, list[Change]]:
            if user.id not in self._users:
                raise UnknownOwner(user.id)
            key = normalize_username(user.username)
            changes: list[Change] = [("login_failures", key, None)] if key in self.t["login_failures"] else []
            if merge_from:
                changes += self._merge_changes(merge_from, user.id)
            doc = {"user_id": user.id, "jti": refresh_jti, "expires_at": expires_at, "created_at": time.time()}
            return session_id, [*changes, ("sessions", session_id, doc)]

        return await self._transact(tx)

    async def reset_login_failures(self, username: str) -> None:
        """Forget the counted attempts of ``username`` (after a successful re-authentication)."""
        key = normalize_username(username)
        await self._transact(lambda: (None, [("login_failures", key, None)] if key in self.t["login_failures"] else []))

    async def set_password(self, user_id: str, password_hash: str) -> None:
        def tx() -> tuple[None, list[Change]]:
            doc = self.t["users"].get(user_id)
            return None, [("users", user_id, {**doc, "password": password_hash})] if doc else []

        await self._transact(tx)
