"""What the service keeps: users, anonymous visitors, carts, login sessions, throttling counters,
and what personalises the shop (browsing history, favourites, preferences).

Routes talk to the async ``Store`` protocol only (accounts, sessions and throttling, visitors and
their data; ``open``/``close`` around the service's life), and ``build_store`` picks the backend
from the settings: ``JsonStore`` here, or ``pg_store.PostgresStore`` when ``DATABASE_URL`` is set.
``JsonStore`` serves reads from memory (by id and by normalised username), after an 8-byte check
for other workers' commits, and makes every change durable through ``journal.JournaledTables``
before it returns; each method that changes something is one transaction, checked under the
cross-worker lock, so e.g. one username has one winner across all workers, and so does each
look-alike key (``usernames.lookalike_keys``: ``раураӏ`` beside ``paypal``), held in a dict from key
to account, kept in step with the users table like the name index.

The one exception is a view of an item: it is worth less than a write, so ``record_view`` only
notes it in this worker's memory and ``flush_views`` (called at most once a second by the app, and
at a clean stop) writes every noted view in one transaction. A ``kill -9`` can lose the views of
the last second or so; never a favourite, preference, cart line or account. This worker's own
unflushed views are part of what it reads (``get_history``) and of what a register or login
carries into the account; another worker sees them once they are flushed, and views another worker
noted for a visitor who has since registered or logged in follow it into the account (the
``upgraded`` table remembers, for an hour, which account each visitor went into; nothing else).
"""

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sortedcontainers import SortedList

from authentication import ANONYMOUS_PREFIX
from journal import Change, JournaledTables, StoreError
from models import MAX_QUANTITY, normalize_username
from usernames import lookalike_keys

if TYPE_CHECKING:
    from settings import Settings

__all__ = ["AccountStore", "Attempt", "ChallengeRequired", "Device", "JsonStore", "Lockout", "RateLimited", "Rotation",
           "SessionStore", "Store", "StoreError", "StoreUnavailable", "UnknownOwner", "User", "UsernameTaken", "Visitor",
           "VisitorStore", "build_store"]

TABLES = ("users", "anonymous", "carts", "sessions", "login_failures", "anonymous_logins", "request_counts",
          "history", "favourites", "preferences", "upgraded", "devices", "spent")
ALL_CLIENTS = "*"  # the anonymous_logins key of the service-wide bound
PERSONAL_TABLES = ("carts", "history", "favourites", "preferences")  # rows keyed by owner, gone with it
ACTIVITY_GRANULARITY = 60.0  # seconds: record an anonymous visitor's activity at most this often
MAX_HISTORY = 50  # distinct items per owner; an older view drops off the end
MAX_FAVOURITES = 1000  # a backstop: the routes only accept catalogue items
MAX_PENDING_OWNERS = 10_000  # unflushed views of this many owners: flush now rather than grow
UPGRADE_MEMORY = 3600.0  # seconds: how long a visitor carried into an account is remembered (see flush_views)


class UsernameTaken(Exception):
    pass


class UnknownOwner(Exception):
    """The cart's owner is gone (an upgraded or purged visitor, a deleted account)."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))


class ChallengeRequired(RateLimited):
    """Past a limit that a solved proof-of-work challenge lifts (trust.py): an account's failures
    from all addresses, or the service-wide bound on new visitors."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Lockout:
    """The login throttling rules (``0`` disables a limit); ``window`` is in seconds."""

    max_failures: int  # per (username, client address), and per device token
    max_failures_per_account: int  # per username, all addresses together: past it, a challenge
    window: float  # failures older than this stop counting


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login attempt that ``begin_login`` counted as a failure before its password is checked
    (so concurrent guesses cannot slip past a limit); ``complete_login`` takes it back on success,
    ``give_back`` when the password was never checked. ``device``: the key of the device token
    that made it trusted, whose own counter it is on; else it is on the name's and the pair's."""

    at: float
    name_key: str  # trust.Trust.name_key: a keyed digest of the normalised username
    client: str
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A device token as the store keeps it (trust.py): the digest of its random part, for an account."""

    key: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Rotation:
    """A refresh that worked: the refresh ``jti`` to hand out and when the session expires. For a
    concurrent refresh inside the grace period, this is the session's current one."""

    jti: str
    expires_at: float


def client_key(client: str) -> str:
    """What the store keeps of a client address: a digest (no addresses in the files)."""
    return hashlib.sha256(client.encode()).hexdigest()[:32]


class StoreUnavailable(Exception):
    """The backend cannot answer right now (a database restarting or unreachable): the request
    gets a 503 with ``Retry-After`` (app.py); the caller may try again shortly."""


@dataclass(frozen=True, slots=True)
class Personal:
    """What personalises the catalogue for one owner, read at once (one round trip on a database)."""

    history: list[tuple[int, float]]  # newest first, with this process's unwritten views
    favourites: list[int]
    cart: dict[int, int]
    preferences: dict[str, str]  # only what the owner has set


@dataclass(frozen=True, slots=True)
class Visitor:
    """An anonymous visitor as the store keeps it (times are Unix seconds)."""

    id: str
    created_at: float
    last_active_at: float


class Lifecycle(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...  # after the last request: waits for queued writes
    async def ping(self) -> None: ...  # readiness: returns once the store answers, else StoreUnavailable


class AccountStore(Protocol):
    """Accounts: one per normalised username, and one per look-alike key (``usernames.lookalike_keys``).

    ``add_user`` raises ``UsernameTaken`` when an account has the name's normalised form or shares
    one of its keys, checked atomically (one winner among concurrent registrations, on every worker
    and host) and without a scan. Accounts that already shared a key before this rule keep working:
    each key is held by one of them. ``find_user`` finds the account a login names (normalised
    name only); ``find_lookalike`` the account that would make ``add_user`` refuse ``username``
    (registration asks it before spending a hash). Deleting an account frees its keys."""

    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def find_user(self, username: str) -> User | None: ...
    async def find_lookalike(self, username: str) -> User | None: ...
    async def list_users(self, limit: int, after: str | None = None) -> list[User]: ...
    async def delete_user(self, user_id: str) -> bool: ...
    async def set_password(self, user_id: str, password_hash: str) -> None: ...
    async def change_password(self, user_id: str, password_hash: str, keep_session: str | None) -> bool: ...


class SessionStore(Protocol):
    """Login sessions (refresh-token families) and the throttling counters."""

    async def begin_login(self, name_key: str, client: str, rules: Lockout, *, user_id: str | None = None,
                          device: str | None = None, proven: bool = False) -> Attempt: ...
    async def give_back(self, attempt: Attempt) -> None: ...
    async def complete_login(self, user: User, attempt: Attempt, refresh_jti: str, expires_at: float,
                             merge_from: str | None = None, new_device: Device | None = None) -> str: ...
    async def reset_login_failures(self, attempt: Attempt) -> None: ...
    async def spend_once(self, key: str, expires_at: float) -> bool: ...
    async def session_user(self, session_id: str, user_id: str) -> User | None: ...
    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, grace: float = 0, max_age: float | None = None) -> Rotation | None: ...
    async def end_session(self, session_id: str) -> None: ...
    async def end_all_sessions(self, user_id: str) -> None: ...
    async def count_requests(self, counts: dict[str, tuple[int, float]]) -> dict[str, int]: ...
    async def prune(self) -> None: ...


class VisitorStore(Protocol):
    """Anonymous visitors, and what any owner (visitor or account) keeps: cart, history (coalesced
    views), favourites, preferences; and an account's data export."""

    async def add_anonymous(self, client: str, limit_per_hour: int, global_limit_per_hour: int = 0) -> str: ...
    async def anonymous_exists(self, anonymous_id: str) -> bool: ...
    async def get_anonymous(self, anonymous_id: str) -> Visitor | None: ...
    async def touch_anonymous(self, anonymous_id: str) -> None: ...
    async def purge_anonymous(self, idle_seconds: float) -> int: ...
    async def get_cart(self, owner: str) -> dict[int, int]: ...
    async def set_cart_item(self, owner: str, item_id: int, quantity: int) -> dict[int, int]: ...
    async def remove_cart_item(self, owner: str, item_id: int) -> dict[int, int]: ...
    async def record_view(self, owner: str, item_id: int) -> None: ...
    async def flush_views(self) -> int: ...
    async def get_history(self, owner: str) -> list[tuple[int, float]]: ...
    async def get_personal(self, owner: str) -> Personal: ...
    async def clear_history(self, owner: str) -> None: ...
    async def get_favourites(self, owner: str) -> list[int]: ...
    async def add_favourite(self, owner: str, item_id: int) -> list[int]: ...
    async def remove_favourite(self, owner: str, item_id: int) -> list[int]: ...
    async def get_preferences(self, owner: str) -> dict[str, str]: ...
    async def set_preferences(self, owner: str, values: dict[str, str]) -> dict[str, str]: ...
    async def export_user(self, user_id: str) -> dict[str, Any] | None: ...


class Store(Lifecycle, AccountStore, SessionStore, VisitorStore, Protocol):
    """What routes and dependencies use; ``build_store`` picks the backend."""


def build_store(settings: "Settings") -> Store:
    """The backend the settings ask for: the JSON file, or PostgreSQL when ``DATABASE_URL`` is set."""
    if settings.database_url is None:
        return JsonStore(settings.users_file)
    from pg_store import PostgresStore  # imported only when used: the JSON default needs no driver

    return PostgresStore(settings.database_url.get_secret_value(), settings.database_pool_size,
                         settings.database_startup_timeout_seconds)


def failure_keys(name_key: str, client: str) -> tuple[str, str]:
    """The ``login_failures`` keys of a (username, address) pair and of the account; ``name_key``
    is already a keyed digest of the name (trust.py), so no typed name is ever kept."""
    return "pair:" + client_key(name_key + "\0" + client), "account:" + name_key


@dataclass(frozen=True, slots=True)
class Failures:
    """One ``login_failures`` counter as both backends keep it: failure times (Unix seconds) in the
    window; ``until``: when the row may be pruned."""

    at: list[float]
    until: float


def typed_history(items: list[list[Any]]) -> list[tuple[int, float]]:
    """A stored history (``[[item_id, viewed_at], ...]``, as JSON or jsonb gives it back) as typed pairs."""
    return [(int(item), float(at)) for item, at in items]


def recent(at: list[float], rules: Lockout, now: float) -> list[float]:
    return [t for t in at if t > now - rules.window]


def account_attempt(at: list[float], rules: Lockout, now: float, proven: bool) -> Failures:
    """The rule for an account's counter (``begin_login``): once the window holds
    ``max_failures_per_account`` failures from all addresses, an attempt that has not ``proven``
    anything (a solved challenge) raises ``ChallengeRequired``; nobody is locked out for good.
    Else the counter with this attempt counted (only the newest ``max_failures_per_account``)."""
    failures = recent(at, rules, now)
    limit = rules.max_failures_per_account
    if len(failures) >= limit and not proven:
        raise ChallengeRequired(failures[-limit] + rules.window - now)
    return Failures([*failures, now][-limit:], now + rules.window)


def pair_attempt(at: list[float], rules: Lockout, now: float) -> Failures:
    """The rule for a (username, address) counter, and for a device token's: raises
    ``RateLimited`` while it holds ``max_failures`` failures within the window (until the oldest
    of them leaves it); else the counter with this attempt counted (only the newest kept)."""
    failures = recent(at, rules, now)
    if len(failures) >= rules.max_failures:
        raise RateLimited(failures[-rules.max_failures] + rules.window - now)
    return Failures([*failures, now][-rules.max_failures:], now + rules.window)


def device_trusted(row: dict[str, Any] | None, user_id: str | None, rules: Lockout, now: float) -> list[float] | None:
    """A device token's failures with this attempt counted, if it makes the attempt trusted: it
    exists, is the account's, has not expired, and has fewer than ``max_failures`` recent
    failures (a stolen token must not allow unlimited guessing); else ``None``."""
    if row is None or row["user_id"] != user_id or row["expires_at"] <= now:
        return None
    failures = recent(row.get("at") or [], rules, now)
    if rules.max_failures and len(failures) >= rules.max_failures:
        return None
    return [*failures, now]


def without(at: list[float] | None, attempt: float) -> list[float] | None:
    """``at`` without ``attempt``; ``None`` if it was not there (nothing to write)."""
    if not at or attempt not in at:
        return None
    failures = list(at)
    failures.remove(attempt)
    return failures


def _legacy_id(doc: dict[str, Any]) -> str:
    """The key of a user in the snapshot; a book-era entry without ``id`` gets a stable one."""
    if "id" in doc and doc["id"] is not None:
        return str(doc["id"])
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + normalize_username(str(doc["username"]))))


class JsonStore:
    def __init__(self, path: Path) -> None:
        self._by_name: dict[str, str] = {}
        self._by_key: dict[str, str] = {}  # look-alike key -> the account holding it
        self._users: dict[str, User] = {}
        self._sorted_names: SortedList | None = None  # built at the first listing, then kept in step
        self._views: dict[str, dict[int, float]] = {}  # owner -> item -> viewed_at, not yet written
        self._flushing: dict[str, dict[int, float]] = {}  # being written by flush_views right now
        self._last_view = 0.0
        self._db = JournaledTables(path, TABLES, self._index, self._reset_index, list_key=_legacy_id)

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
        self._users.clear()
        self._sorted_names = None

    def _index(self, table: str, key: str, old: Any, new: Any) -> None:
        if table != "users":
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
            self._users.pop(key, None)
        if new is not None:
            username, password = new["username"], new["password"]
            if not isinstance(username, str) or not isinstance(password, str):
                raise TypeError("username and password must be strings")
            name = normalize_username(username)
            if self._by_name.get(name, key) != key:
                raise ValueError(f"duplicate username {username!r}")
            if self._sorted_names is not None and name not in self._by_name:
                self._sorted_names.add(name)
            self._by_name[name] = key
            self._users[key] = User(key, username, password)
            if old is None or old["username"] != username:
                for k in lookalike_keys(username):  # a key already held (accounts older than the rule) stays so
                    self._by_key.setdefault(k, key)

    async def _transact(self, fn: Any) -> Any:
        return await self._db.transact(fn)

    # -- users ---------------------------------------------------------------------------------

    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User:
        keys = lookalike_keys(username)  # before the lock: it is held for as short a time as can be

        def tx() -> tuple[User, list[Change]]:
            if normalize_username(username) in self._by_name or not self._by_key.keys().isdisjoint(keys):
                raise UsernameTaken(username)
            user_id = str(uuid.uuid4())
            doc = {"id": user_id, "username": username, "password": password_hash}
            changes: list[Change] = [("users", user_id, doc)]
            if merge_from:
                changes += self._merge_changes(merge_from, user_id)
            return User(user_id, username, password_hash), changes

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

    async def list_users(self, limit: int, after: str | None = None) -> list[User]:
        """Up to ``limit`` users ordered by normalised username, from just after ``after`` (a
        normalised username): O(log n + limit), from an index kept sorted as users change."""
        self._db.refresh()
        if self._sorted_names is None:
            self._sorted_names = SortedList(self._by_name)
        names = self._sorted_names.irange(minimum=after, inclusive=(after is None, True))
        return [self._users[self._by_name[name]] for name in islice(names, limit)]

    async def delete_user(self, user_id: str) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            if user_id not in self._users:
                return False, []
            changes: list[Change] = [("users", user_id, None), *self._owned_rows(user_id)]
            changes += [("upgraded", k, None) for k, v in self.t["upgraded"].items() if v["user_id"] == user_id]
            self._views.pop(user_id, None)
            changes += [("sessions", sid, None) for sid, s in self.t["sessions"].items() if s["user_id"] == user_id]
            return True, changes + self._devices_of(user_id)

        return await self._transact(tx)

    # -- anonymous visitors --------------------------------------------------------------------

    async def add_anonymous(self, client: str, limit_per_hour: int, global_limit_per_hour: int = 0) -> str:
        """Create a visitor identity, counting it against ``client``'s hourly allowance and the
        service-wide one (``0``: no limit; past it, ``ChallengeRequired``)."""
        def tx() -> tuple[str, list[Change]]:
            now = time.time()
            changes: list[Change] = []
            for key, limit in ((client_key(client), limit_per_hour), (ALL_CLIENTS, global_limit_per_hour)):
                if not limit:
                    continue
                window = self.t["anonymous_logins"].get(key)
                if window is None or now - window["since"] >= 3600:
                    window = {"since": now, "count": 0}
                if window["count"] >= limit:
                    raise (RateLimited if key != ALL_CLIENTS else ChallengeRequired)(window["since"] + 3600 - now)
                changes.append(("anonymous_logins", key, {"since": window["since"], "count": window["count"] + 1}))
            anonymous_id = ANONYMOUS_PREFIX + str(uuid.uuid4())
            changes.append(("anonymous", anonymous_id, {"created_at": now, "last_active_at": now}))
            return anonymous_id, changes

        return await self._transact(tx)

    async def anonymous_exists(self, anonymous_id: str) -> bool:
        self._db.refresh()
        return anonymous_id in self.t["anonymous"]

    async def get_anonymous(self, anonymous_id: str) -> Visitor | None:
        self._db.refresh()
        entry = self.t["anonymous"].get(anonymous_id)
        return Visitor(anonymous_id, entry["created_at"], entry["last_active_at"]) if entry else None

    async def touch_anonymous(self, anonymous_id: str) -> None:
        self._db.refresh()
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
            for k in idle:
                changes += self._owned_rows(k)
                self._views.pop(k, None)
            return len(idle), changes

        return await self._transact(tx)

    # -- carts ---------------------------------------------------------------------------------

    async def get_cart(self, owner: str) -> dict[int, int]:
        self._db.refresh()
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
        changes.append(("upgraded", anonymous_id, {"user_id": user_id, "at": time.time()}))
        return changes + self._merge_personal_changes(anonymous_id, user_id)

    # -- login sessions (a refresh-token family) -----------------------------------------------

    async def session_user(self, session_id: str, user_id: str) -> User | None:
        """The account behind a live login session; ``None`` once logged out or deleted."""
        self._db.refresh()
        session = self.t["sessions"].get(session_id)
        return self._users.get(user_id) if session is not None and session["user_id"] == user_id else None

    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, grace: float = 0, max_age: float | None = None) -> Rotation | None:
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
                doc = {**session, "jti": new_jti, "expires_at": expires_at, "prev_jti": old_jti, "rotated_at": now}
                return Rotation(new_jti, expires_at), [("sessions", session_id, doc)]
            if grace and session.get("prev_jti") == old_jti and now - session.get("rotated_at", 0) < grace:
                return Rotation(session["jti"], session["expires_at"]), []
            return None, [("sessions", session_id, None)]

        return await self._transact(tx)

    async def end_session(self, session_id: str) -> None:
        await self._transact(lambda: (None, [("sessions", session_id, None)] if session_id in self.t["sessions"] else []))

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
            changes += [(table, k, None) for table in ("devices", "spent") for k, v in self.t[table].items()
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
                changes.append(("login_failures", pair_key, {"at": pair.at, "until": pair.until}))
            if rules.max_failures_per_account:
                account = account_attempt(rows.get(account_key, {}).get("at", []), rules, now, proven)
                changes.append(("login_failures", account_key, {"at": account.at, "until": account.until}))
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
                             merge_from: str | None = None, new_device: Device | None = None) -> str:
        """One transaction: forget the failures ``_forget_failures`` says, move a visitor's data
        in, keep a new device token, start a session. Failures from other addresses still count:
        a login of the owner does not reset a distributed guess."""
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
            doc = {"user_id": user.id, "jti": refresh_jti, "expires_at": expires_at, "created_at": time.time()}
            return session_id, [*changes, ("sessions", session_id, doc)]

        return await self._transact(tx)

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

    async def set_password(self, user_id: str, password_hash: str) -> None:
        def tx() -> tuple[None, list[Change]]:
            doc = self.t["users"].get(user_id)
            return None, [("users", user_id, {**doc, "password": password_hash})] if doc else []

        await self._transact(tx)

    # -- personalisation: browsing history, favourites, preferences -----------------------------
    # Rows keyed by owner (a user id or an anonymous id), like carts:
    #   history:     {"items": [[item_id, viewed_at], ...] newest first, distinct, <= MAX_HISTORY,
    #                 "cleared_at": when DELETE /history last ran, or None}
    #   favourites:  [item_id, ...] ascending
    #   preferences: {"sort": ..., "theme": ...}, only the keys the owner has set

    def _owned_rows(self, owner: str) -> list[Change]:
        """Deletions of everything kept under ``owner`` (its cart and personal data)."""
        return [(table, owner, None) for table in PERSONAL_TABLES if owner in self.t[table]]

    def _exists(self, owner: str) -> bool:
        return owner in self.t["anonymous"] or owner in self._users

    async def record_view(self, owner: str, item_id: int) -> None:
        """Note a view in memory (no I/O); ``flush_views`` makes it durable."""
        views = self._views.get(owner)
        if views is None:
            if len(self._views) >= MAX_PENDING_OWNERS:
                await self.flush_views()
            views = self._views.setdefault(owner, {})
        views.pop(item_id, None)  # a view again moves the item to the end (the newest)
        self._last_view = views[item_id] = max(time.time(), self._last_view + 1e-6)  # strictly newer
        if len(views) > MAX_HISTORY:
            del views[next(iter(views))]

    async def flush_views(self) -> int:
        """Write every noted view in one transaction; the number of owners written. Views of an
        owner that is gone (purged, deleted, or a visitor carried into an account) are dropped."""
        if not self._views or self._flushing:
            return 0
        self._flushing, self._views = self._views, {}

        def tx() -> tuple[int, list[Change]]:
            by_owner: dict[str, list[tuple[int, float]]] = {}
            for owner, views in self._flushing.items():
                if not self._exists(owner):  # a visitor that became an account: its views go there
                    owner = self.t["upgraded"].get(owner, {}).get("user_id", "")
                if self._exists(owner):
                    by_owner.setdefault(owner, []).extend(views.items())
            changes: list[Change] = []
            for owner, views in by_owner.items():
                row = self._history_row(owner)
                cleared = row.get("cleared_at") or 0.0
                items = _merge_history(row.get("items", []), [(item, at) for item, at in views if at > cleared])
                changes.append(("history", owner, {"items": items, "cleared_at": row.get("cleared_at")}))
            return len(changes), changes

        try:
            return await self._transact(tx)
        except BaseException:
            for owner, views in self._flushing.items():  # not written: keep them for the next try
                self._views[owner] = {**views, **self._views.get(owner, {})}
            raise
        finally:
            self._flushing = {}

    def _history_row(self, owner: str) -> dict[str, Any]:
        return self.t["history"].get(owner) or {}

    def _history_items(self, owner: str) -> list[list[Any]]:
        """Stored history plus this worker's unwritten views of ``owner``, newest first."""
        row = self._history_row(owner)
        items = row.get("items", [])
        pending = [*self._flushing.get(owner, {}).items(), *self._views.get(owner, {}).items()]
        if not pending:
            return items
        cleared = row.get("cleared_at") or 0.0  # a flush under way may still hold views from before it
        return _merge_history(items, [(item, at) for item, at in pending if at > cleared])

    async def get_history(self, owner: str) -> list[tuple[int, float]]:
        self._db.refresh()
        return typed_history(self._history_items(owner))

    async def get_personal(self, owner: str) -> Personal:
        self._db.refresh()
        t = self.t
        return Personal(typed_history(self._history_items(owner)),
                        list(t["favourites"].get(owner, [])),
                        {int(k): v for k, v in t["carts"].get(owner, {}).items()},
                        dict(t["preferences"].get(owner, {})))

    async def clear_history(self, owner: str) -> None:
        """Forget the history, including views other workers have noted but not yet written."""
        def tx() -> tuple[None, list[Change]]:
            self._check_owner(owner)
            self._views.pop(owner, None)
            return None, [("history", owner, {"items": [], "cleared_at": time.time()})]

        await self._transact(tx)

    async def get_favourites(self, owner: str) -> list[int]:
        self._db.refresh()
        return list(self.t["favourites"].get(owner, []))

    async def add_favourite(self, owner: str, item_id: int) -> list[int]:
        def tx() -> tuple[list[int], list[Change]]:
            self._check_owner(owner)
            current = self.t["favourites"].get(owner, [])
            if item_id in current:
                return list(current), []
            if len(current) >= MAX_FAVOURITES:
                raise ValueError(f"at most {MAX_FAVOURITES} favourites")
            favourites = sorted([*current, item_id])
            return favourites, [("favourites", owner, favourites)]

        return await self._transact(tx)

    async def remove_favourite(self, owner: str, item_id: int) -> list[int]:
        """Raises ``KeyError`` when the item is not a favourite."""
        def tx() -> tuple[list[int], list[Change]]:
            self._check_owner(owner)
            current = self.t["favourites"].get(owner, [])
            if item_id not in current:
                raise KeyError(item_id)
            favourites = [i for i in current if i != item_id]
            return favourites, [("favourites", owner, favourites or None)]

        return await self._transact(tx)

    async def get_preferences(self, owner: str) -> dict[str, str]:
        """Only the preferences the owner has set; the routes fill in the defaults."""
        self._db.refresh()
        return dict(self.t["preferences"].get(owner, {}))

    async def set_preferences(self, owner: str, values: dict[str, str]) -> dict[str, str]:
        def tx() -> tuple[dict[str, str], list[Change]]:
            self._check_owner(owner)
            merged = {**self.t["preferences"].get(owner, {}), **values}
            return merged, [("preferences", owner, merged)] if values else []

        return await self._transact(tx)

    def _merge_personal_changes(self, anonymous_id: str, user_id: str) -> list[Change]:
        """Part of the register/login merge: history by time, favourites unioned, the account's
        own preferences kept and the visitor's filling in the rest; the visitor's rows go."""
        changes = [(t, anonymous_id, None) for t in ("history", "favourites", "preferences")
                   if anonymous_id in self.t[t]]
        visitor_history = self._history_items(anonymous_id)
        if visitor_history:
            row = self._history_row(user_id)
            changes.append(("history", user_id, {"items": _merge_history(row.get("items", []), visitor_history),
                                                 "cleared_at": row.get("cleared_at")}))
        visitor_favourites = self.t["favourites"].get(anonymous_id)
        if visitor_favourites:
            union = sorted({*self.t["favourites"].get(user_id, []), *visitor_favourites})
            changes.append(("favourites", user_id, union[:MAX_FAVOURITES]))
        visitor_preferences = self.t["preferences"].get(anonymous_id)
        if visitor_preferences:
            changes.append(("preferences", user_id, {**visitor_preferences, **self.t["preferences"].get(user_id, {})}))
        return changes

    # -- the data export -----------------------------------------------------------------------

    async def export_user(self, user_id: str) -> dict[str, Any] | None:
        """Everything kept about an account, read at one instant; ``None`` if there is none.
        Sessions are listed without their refresh-token id; one made before sessions recorded
        their start has ``created_at`` ``None``."""
        self._db.refresh()
        user = self._users.get(user_id)
        if user is None:
            return None
        now = time.time()
        sessions = [{"id": sid, "created_at": s.get("created_at"), "expires_at": s["expires_at"]}
                    for sid, s in self.t["sessions"].items() if s["user_id"] == user_id and s["expires_at"] >= now]
        return {
            "profile": {"id": user.id, "username": user.username},
            "cart": await self.get_cart(user_id),
            "history": await self.get_history(user_id),
            "favourites": await self.get_favourites(user_id),
            "preferences": await self.get_preferences(user_id),
            "sessions": sorted(sessions, key=lambda s: s["created_at"] or 0.0),
        }


def _merge_history(*histories: Any) -> list[list[Any]]:
    """Histories (``[item_id, viewed_at]`` pairs, any order) as one: each item once, at its latest
    view, newest first, at most ``MAX_HISTORY``."""
    latest: dict[int, float] = {}
    for history in histories:
        for item, at in history:
            if at > latest.get(int(item), -1.0):
                latest[int(item)] = at
    ordered = sorted(latest.items(), key=lambda pair: pair[1], reverse=True)[:MAX_HISTORY]
    return [[item, at] for item, at in ordered]
