"""``JsonStore``: the store in one JSON file (``users.json``), the embedded default.

Reads are served from memory (by id, by normalised username, by look-alike key), after an 8-byte
check for other workers' commits; every change is durable through ``journal.JournaledTables``
before it returns. Each method that changes something is one transaction, checked under the
cross-worker lock, so e.g. one username has one winner across all workers, and so does each
look-alike key (``usernames.lookalike_keys``: ``раураӏ`` beside ``paypal``), held in a dict from
key to account, kept in step with the users table like the name index. Accounts are stored as
``records.user_doc`` writes them (the book's ``{"id", "username", "password"}``, plus any field
the record gained); the ``User`` record of an account is made from its document when it is first
read, and dropped when the document changes (``Accounts``): the store starts with its indexes
only, which with 100,000 accounts is a third of its start-up time and 13 MB it would hold for
records nobody reads (bench rows 8a and 8b). This module holds accounts, sessions and the login
throttling; ``json_visitors`` the visitors and what owners keep.
"""

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from itertools import islice, takewhile
from pathlib import Path
from typing import Any

from sortedcontainers import SortedList

from journal import Change, JournaledTables
from models import normalize_username
from usernames import lookalike_keys

from .json_audit import JsonAudit
from .json_factors import EXPIRING, FACTOR_TABLES, JsonFactors
from .json_visitors import JsonVisitors
from .records import (
    Attempt,
    Device,
    Lockout,
    Rotation,
    SessionView,
    UnknownOwner,
    User,
    UsernameTaken,
    user_doc,
    user_from_doc,
)
from .rules import (
    UPGRADE_MEMORY,
    account_attempt,
    changeable_fields,
    device_trusted,
    failure_keys,
    pair_attempt,
    without,
)

TABLES = ("users", "anonymous", "carts", "sessions", "login_failures", "anonymous_logins", "request_counts",
          "history", "favourites", "preferences", "upgraded", "devices", "spent", *FACTOR_TABLES)


def _legacy_id(doc: dict[str, Any]) -> str:
    """The key of a user in the snapshot; a book-era entry without ``id`` gets a stable one."""
    if "id" in doc and doc["id"] is not None:
        return str(doc["id"])
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + normalize_username(str(doc["username"]))))


class Accounts(Mapping[str, User]):
    """The users table as ``User`` records, each made on first read and kept until its document
    changes (``forget``). Reads are on the event loop, like the journal's changes."""

    def __init__(self, docs: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._docs = docs  # the users table of the moment (the journal may replace it on a reload)
        self._made: dict[str, User] = {}

    def get(self, key: str, default: Any = None) -> Any:
        user = self._made.get(key)
        if user is None:
            doc = self._docs().get(key)
            if doc is None:
                return default
            user = self._made[key] = user_from_doc({**doc, "id": key})
        return user

    def __getitem__(self, key: str) -> User:
        user = self.get(key)
        if user is None:
            raise KeyError(key)
        return user

    def __contains__(self, key: object) -> bool:
        return key in self._docs()

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs())

    def __len__(self) -> int:
        return len(self._docs())

    def forget(self, key: str) -> None:
        self._made.pop(key, None)

    def clear(self) -> None:
        self._made.clear()


class JsonStore(JsonFactors, JsonVisitors, JsonAudit):
    def __init__(self, path: Path) -> None:
        self._by_name: dict[str, str] = {}
        self._by_key: dict[str, str] = {}  # look-alike key -> the account holding it
        self._by_credential: dict[str, str] = {}  # passkey credential id -> passkey id (json_factors)
        self._users = Accounts(lambda: self.t["users"])
        self._sorted_names: SortedList | None = None  # built at the first listing, then kept in step
        self._views: dict[str, dict[int, float]] = {}  # owner -> item -> viewed_at, not yet written
        self._flushing: dict[str, dict[int, float]] = {}  # being written by flush_views right now
        self._last_view = 0.0
        self._db = JournaledTables(path, TABLES, self._index, self._reset_index, list_key=_legacy_id)
        self._init_audit(path)

    @property
    def t(self) -> dict[str, dict[str, Any]]:
        return self._db.tables

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._db.open)  # reads the files: off the event loop

    async def ping(self) -> None:
        """Loaded at ``open`` (the service does not serve before): always ready."""

    async def close(self) -> None:
        """Wait for queued writes, then fold the journal into ``users.json`` (off the event loop)."""
        await self._db.drain()
        await asyncio.to_thread(self._db.close)

    def _reset_index(self) -> None:
        self._by_name.clear()
        self._by_key.clear()
        self._by_credential.clear()
        self._users.clear()
        self._sorted_names = None

    def _index(self, table: str, key: str, old: Any, new: Any) -> None:
        if table != "users":
            self._index_factor(table, key, old, new)
            return
        if old is not None and (new is None or new["username"] != old["username"]):
            for k in lookalike_keys(str(old["username"])):
                if self._by_key.get(k) == key:
                    del self._by_key[k]
        if old is not None:
            name = normalize_username(str(old["username"]))
            if self._by_name.get(name) == key:
                del self._by_name[name]
                if self._sorted_names is not None:
                    self._sorted_names.discard(name)
        self._users.forget(key)
        if new is not None:
            username, password = new["username"], new["password"]
            if not isinstance(username, str) or not isinstance(password, str):
                raise TypeError("username and password must be strings")
            name = normalize_username(username)
            if name == username:
                name = username  # one string, not two equal ones (most names are typed in small letters)
            if self._by_name.get(name, key) != key:
                raise ValueError(f"duplicate username {username!r}")
            if self._sorted_names is not None and name not in self._by_name:
                self._sorted_names.add(name)
            self._by_name[name] = key
            if old is None or old["username"] != username:
                for k in lookalike_keys(username):  # a key already held (accounts older than the rule) stays so
                    self._by_key.setdefault(name if k == name else k, key)

    async def _transact(self, fn: Any) -> Any:
        return await self._db.transact(fn)

    # -- users ---------------------------------------------------------------------------------

    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User:
        keys = lookalike_keys(username)  # before the lock: it is held for as short a time as can be

        def tx() -> tuple[User, list[Change]]:
            if normalize_username(username) in self._by_name or not self._by_key.keys().isdisjoint(keys):
                raise UsernameTaken(username)
            user_id = str(uuid.uuid4())
            user = User(user_id, username, password_hash, created_at=time.time())
            doc = user_doc(user)
            changes: list[Change] = [("users", user_id, doc)]
            if merge_from:
                changes += self._merge_changes(merge_from, user_id)
            return user, changes

        return await self._transact(tx)

    async def get_user(self, user_id: str) -> User | None:
        self._db.refresh()  # other workers' commits: an 8-byte read when there are none
        return self._users.get(user_id)

    async def find_user(self, username: str) -> User | None:
        self._db.refresh()
        user_id = self._by_name.get(normalize_username(username))
        return self._users.get(user_id) if user_id else None

    async def find_lookalike(self, username: str) -> User | None:
        self._db.refresh()
        user_id = self._by_name.get(normalize_username(username))
        for k in lookalike_keys(username) if user_id is None else ():
            user_id = self._by_key.get(k)
            if user_id is not None:
                break
        return self._users.get(user_id) if user_id else None

    async def list_users(self, limit: int, after: str | None = None, prefix: str | None = None) -> list[User]:
        """Up to ``limit`` users ordered by normalised username, from just after ``after`` (a
        normalised username), only names starting with ``prefix`` if given: O(log n + limit),
        from an index kept sorted as users change (the names with a prefix are adjacent in it)."""
        self._db.refresh()
        if self._sorted_names is None:
            self._sorted_names = SortedList(self._by_name)
        if prefix and (after is None or after < prefix):
            names = self._sorted_names.irange(minimum=prefix)
        else:
            names = self._sorted_names.irange(minimum=after, inclusive=(after is None, True))
        if prefix:
            names = takewhile(lambda name: name.startswith(prefix), names)
        return [self._users[self._by_name[name]] for name in islice(names, limit)]

    async def delete_user(self, user_id: str) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            if user_id not in self._users:
                return False, []
            changes: list[Change] = [("users", user_id, None), *self._owned_rows(user_id)]
            changes += [("upgraded", k, None) for k, v in self.t["upgraded"].items() if v["user_id"] == user_id]
            self._views.pop(user_id, None)
            changes += [("sessions", sid, None) for sid, s in self.t["sessions"].items() if s["user_id"] == user_id]
            return True, changes + self._devices_of(user_id) + self._factor_rows(user_id)

        return await self._transact(tx)

    # -- login sessions (a refresh-token family) -----------------------------------------------

    async def session_user(self, session_id: str, user_id: str) -> User | None:
        """The account behind a live login session; ``None`` once logged out or deleted."""
        self._db.refresh()
        session = self.t["sessions"].get(session_id)
        return self._users.get(user_id) if session is not None and session["user_id"] == user_id else None

    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, grace: float = 0, max_age: float | None = None, *,
                             client: str | None = None, user_agent: str | None = None) -> Rotation | None:
        """Swap the session's refresh token (compare-and-set on the current ``jti``). The one it
        replaced, presented again within ``grace`` seconds (two tabs refreshing at once), gets the
        current one back; any other spent one (reuse: stolen) ends the session, and so does a
        session older than ``max_age`` seconds. A session stored before sessions recorded
        ``created_at`` has an unknown age: it is treated as too old (fail closed; its user logs in
        once more)."""
        def tx() -> tuple[Rotation | None, list[Change]]:
            now = time.time()
            session = self.t["sessions"].get(session_id)
            if session is None or session["user_id"] != user_id or user_id not in self._users:
                return None, []
            if max_age is not None and now - session.get("created_at", float("-inf")) > max_age:
                return None, [("sessions", session_id, None)]
            if session["jti"] == old_jti:
                doc = {**session, "jti": new_jti, "expires_at": expires_at, "prev_jti": old_jti, "rotated_at": now,
                       "last_used_at": now, "client": client or session.get("client"),
                       "user_agent": user_agent or session.get("user_agent")}
                return Rotation(new_jti, expires_at), [("sessions", session_id, doc)]
            if grace and session.get("prev_jti") == old_jti and now - session.get("rotated_at", 0) < grace:
                return Rotation(session["jti"], session["expires_at"]), []
            return None, [("sessions", session_id, None)]

        return await self._transact(tx)

    async def list_sessions(self, user_id: str) -> list[SessionView]:
        """The account's live sessions, newest first (a session older than these fields: ``None``s)."""
        self._db.refresh()
        now = time.time()
        sessions = [SessionView(sid, s.get("created_at"), s.get("last_used_at", s.get("created_at")), s["expires_at"],
                                s.get("client"), s.get("user_agent"))
                    for sid, s in self.t["sessions"].items() if s["user_id"] == user_id and s["expires_at"] >= now]
        return sorted(sessions, key=lambda s: (s.created_at or 0.0, s.id), reverse=True)

    async def end_session(self, session_id: str, user_id: str | None = None) -> bool:
        """End the session (only if it is ``user_id``'s, when given); whether one ended."""
        def tx() -> tuple[bool, list[Change]]:
            session = self.t["sessions"].get(session_id)
            if session is None or (user_id is not None and session["user_id"] != user_id):
                return False, []
            return True, [("sessions", session_id, None)]

        return await self._transact(tx)

    async def end_all_sessions(self, user_id: str) -> None:
        """Every session of the account, and every device token: "log out everywhere"."""
        def tx() -> tuple[None, list[Change]]:
            sessions = [("sessions", sid, None) for sid, s in self.t["sessions"].items() if s["user_id"] == user_id]
            return None, sessions + self._devices_of(user_id)

        await self._transact(tx)

    async def change_password(self, user_id: str, password_hash: str, keep_session: str | None) -> bool:
        """One transaction: the new hash, and every other login session of the account ends
        (``keep_session``, the caller's, stays), and every device token. False if the account is gone."""
        def tx() -> tuple[bool, list[Change]]:
            doc = self.t["users"].get(user_id)
            if doc is None:
                return False, []
            changes: list[Change] = [("users", user_id, {**doc, "password": password_hash})]
            changes += [("sessions", sid, None) for sid, s in self.t["sessions"].items()
                        if s["user_id"] == user_id and sid != keep_session]
            return True, changes + self._devices_of(user_id)

        return await self._transact(tx)

    async def prune(self) -> None:
        """Drop what has expired: sessions, throttling windows, device tokens, spent challenges."""
        def tx() -> tuple[None, list[Change]]:
            now = time.time()
            changes: list[Change] = [("sessions", k, None) for k, v in self.t["sessions"].items() if v["expires_at"] < now]
            changes += [("login_failures", k, None) for k, v in self.t["login_failures"].items() if v["until"] < now]
            changes += [("anonymous_logins", k, None) for k, v in self.t["anonymous_logins"].items()
                        if now - v["since"] >= 3600]
            changes += [("request_counts", k, None) for k, v in self.t["request_counts"].items()
                        if v["expires_at"] < now]
            changes += [("upgraded", k, None) for k, v in self.t["upgraded"].items() if now - v["at"] >= UPGRADE_MEMORY]
            changes += [(table, k, None) for table in ("devices", "spent", *EXPIRING) for k, v in self.t[table].items()
                        if v["expires_at"] < now]
            return None, changes

        await self._transact(tx)

    async def count_requests(self, counts: dict[str, tuple[int, float]]) -> dict[str, int]:
        """Add each worker's request counts (``key: (count, expires_at)``); the totals of all workers.
        Called about once a second per worker by ``ratelimit.RateLimiter``, not per request."""
        def tx() -> tuple[dict[str, int], list[Change]]:
            totals: dict[str, int] = {}
            changes: list[Change] = []
            for key, (count, expires_at) in counts.items():
                totals[key] = self.t["request_counts"].get(key, {}).get("count", 0) + count
                if count:  # 0: only asking for the total
                    changes.append(("request_counts", key, {"count": totals[key], "expires_at": expires_at}))
            return totals, changes

        return await self._transact(tx)

    # -- logging in: brute-force throttling, then a session ---------------------------------

    async def begin_login(self, name_key: str, client: str, rules: Lockout, *, user_id: str | None = None,
                          device: str | None = None, proven: bool = False) -> Attempt:
        """Count the attempt as a failure before the password is checked, so concurrent guesses
        cannot slip past the limits; ``complete_login`` or ``give_back`` takes it back. With a
        ``device`` token key of ``user_id`` that is still trusted (``device_trusted``), only the
        device's own counter counts it. Otherwise raises ``RateLimited`` while this (name,
        address) pair holds ``max_failures`` failures in the window, and ``ChallengeRequired``
        while the name holds ``max_failures_per_account`` from all addresses, unless ``proven``.
        Unknown names count the same way, so a 429 tells nothing about which accounts exist."""
        def tx() -> tuple[Attempt, list[Change]]:
            now = time.time()
            if device is not None:
                failures = device_trusted(self.t["devices"].get(device), user_id, rules, now)
                if failures is not None:
                    row = self.t["devices"][device]
                    return Attempt(now, name_key, client, device), [("devices", device, {**row, "at": failures})]
            rows = self.t["login_failures"]
            pair_key, account_key = failure_keys(name_key, client)
            changes: list[Change] = []
            if rules.max_failures:
                pair = pair_attempt(rows.get(pair_key, {}).get("at", []), rules, now)
                changes.append(("login_failures", pair_key, {"at": pair.at, "until": pair.until, "name": name_key}))
            if rules.max_failures_per_account:
                account = account_attempt(rows.get(account_key, {}).get("at", []), rules, now, proven)
                changes.append(("login_failures", account_key, {"at": account.at, "until": account.until,
                                                                "name": name_key}))
            return Attempt(now, name_key, client), changes

        return await self._transact(tx)

    async def give_back(self, attempt: Attempt) -> None:
        """Take back an attempt whose password was never checked (shed, or its client left)."""
        def tx() -> tuple[None, list[Change]]:
            if attempt.device is not None:
                return None, self._uncount("devices", attempt.device, attempt.at)
            keys = failure_keys(attempt.name_key, attempt.client)
            return None, [c for key in keys for c in self._uncount("login_failures", key, attempt.at)]

        await self._transact(tx)

    def _uncount(self, table: str, key: str, at: float) -> list[Change]:
        row = self.t[table].get(key)
        failures = without(row and row.get("at"), at)
        return [] if failures is None or row is None else [(table, key, {**row, "at": failures})]

    async def complete_login(self, user: User, attempt: Attempt, refresh_jti: str, expires_at: float,
                             merge_from: str | None = None, new_device: Device | None = None,
                             user_agent: str | None = None) -> str:
        """One transaction: forget the failures ``_forget_failures`` says, move a visitor's data
        in, keep a new device token, start a session, note the login on the account
        (``last_login_at``). Failures from other addresses still count: a login of the owner does
        not reset a distributed guess."""
        session_id = uuid.uuid4().hex

        def tx() -> tuple[str, list[Change]]:
            if user.id not in self._users:
                raise UnknownOwner(user.id)
            changes = self._forget_failures(attempt)
            if merge_from:
                changes += self._merge_changes(merge_from, user.id)
            if new_device is not None:
                changes.append(("devices", new_device.key, {"user_id": user.id, "expires_at": new_device.expires_at,
                                                            "at": [], "created_at": time.time()}))
            now = time.time()
            doc = {"user_id": user.id, "jti": refresh_jti, "expires_at": expires_at, "created_at": now,
                   "last_used_at": now, "client": attempt.client, "user_agent": user_agent}
            account = {**self.t["users"][user.id], "last_login_at": now}
            return session_id, [*changes, ("users", user.id, account), ("sessions", session_id, doc)]

        return await self._transact(tx)

    async def unlock(self, name_key: str, user_id: str) -> None:
        """Forget every failure counted against the name (every address's, and the account's
        own counter) and on the account's device tokens."""
        def tx() -> tuple[None, list[Change]]:
            _, account_key = failure_keys(name_key, "")
            changes: list[Change] = [("login_failures", k, None) for k, v in self.t["login_failures"].items()
                                     if k == account_key or v.get("name") == name_key]
            changes += [("devices", k, {**v, "at": []}) for k, v in self.t["devices"].items()
                        if v["user_id"] == user_id and v.get("at")]
            return None, changes

        await self._transact(tx)

    async def reset_login_failures(self, attempt: Attempt) -> None:
        """After a successful re-authentication: what ``complete_login`` forgets, without a session."""
        await self._transact(lambda: (None, self._forget_failures(attempt)))

    def _forget_failures(self, attempt: Attempt) -> list[Change]:
        """After the right password: a trusted device's failures; else this address's failures
        for the name, and the attempt ``begin_login`` counted on the account."""
        if attempt.device is not None:
            row = self.t["devices"].get(attempt.device)
            return [("devices", attempt.device, {**row, "at": []})] if row else []
        pair_key, account_key = failure_keys(attempt.name_key, attempt.client)
        changes: list[Change] = [("login_failures", pair_key, None)] if pair_key in self.t["login_failures"] else []
        return changes + self._uncount("login_failures", account_key, attempt.at)

    async def spend_once(self, key: str, expires_at: float) -> bool:
        """Mark a proof-of-work solution used; False if it already was (a replay)."""
        def tx() -> tuple[bool, list[Change]]:
            if key in self.t["spent"]:
                return False, []
            return True, [("spent", key, {"expires_at": expires_at})]

        return await self._transact(tx)

    def _devices_of(self, user_id: str) -> list[Change]:
        return [("devices", k, None) for k, v in self.t["devices"].items() if v["user_id"] == user_id]

    async def update_user(self, user_id: str, **changes: Any) -> User | None:
        """Set some attributes of the account (fields of ``User`` but ``id``, ``username``); the
        account as it now is, or ``None`` if there is none. The one way to change an account
        (``change_password`` also ends sessions), so every cached copy follows."""
        changeable_fields(changes)

        def tx() -> tuple[User | None, list[Change]]:
            doc = self.t["users"].get(user_id)
            if doc is None:
                return None, []
            new = {**doc, **changes}
            return user_from_doc({**new, "id": user_id}), [("users", user_id, new)]

        return await self._transact(tx)
