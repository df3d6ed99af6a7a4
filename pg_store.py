"""The store in PostgreSQL, for several app hosts sharing one database (``DATABASE_URL``).

``PostgresStore`` answers the same ``store.Store`` protocol as ``JsonStore``, with the same
semantics, so routes and tests do not know which one runs. The tables (migrations/versions/) mirror
the JSON store's; times are Unix seconds, as there.

- **Transactions.** Every method that changes data is one transaction (asyncpg, READ COMMITTED)
  that checks its own invariants on rows it has locked: one winner per normalised username (a
  unique index, ``INSERT ... ON CONFLICT DO NOTHING``) and per look-alike key (``username_keys``,
  its primary key, filled in the same transaction: ``раураӏ`` beside ``paypal``); refresh rotation as compare-and-set on the
  current ``jti`` under ``SELECT ... FOR UPDATE``; lockout and anonymous-login counters read and
  written under a row lock (a missing row is first inserted with ``ON CONFLICT DO NOTHING``, so two
  first attempts cannot both count from zero); writes to an owner's data lock the owner's row, so
  a visitor upgraded or purged meanwhile owns nothing (``UnknownOwner``), as in ``JsonStore``.
  A deadlock or serialisation failure is retried twice.
- **Fast protected reads.** Each process keeps the sessions, accounts and visitors it has read
  in memory (at most ``CACHE_ENTRIES`` of each, each at most ``CACHE_SECONDS`` old), so a
  protected GET usually costs no round trip. Every transaction that revokes (logout, logout-all,
  password change, account deletion, refresh-token reuse, a visitor upgraded or purged) sends a
  ``NOTIFY`` in the same transaction; one ``LISTEN`` connection per process drops the named
  entries when it arrives (milliseconds after the commit). A read that overlapped an
  invalidation does not fill the cache (a generation counter). Once the listener's loss is seen
  (at once for a closed connection; a silent one fails its heartbeat within 1 + 3 s) the cache is
  emptied, nothing is served from or put into it until the listener is back, and it is emptied
  again then. Sessions and visitors found missing are remembered too (``_gone``): their ids are
  random and never reused, and a token names one only after it was committed, so once missing
  they are gone for good. Only the ``*`` notification of ``import-json`` (which may bring ids
  back) empties that memory; a lost listener does not. A revoked token replayed in a loop then
  costs no query, whether or not the listener is up.
- **Faults.** Any database error or timeout in a request raises ``StoreUnavailable`` (app.py
  answers 503 with ``Retry-After``); the pool reconnects by itself when the database is back.
  Start-up waits for an unreachable database up to ``DATABASE_STARTUP_TIMEOUT_SECONDS``, then
  fails with a ``StoreError`` naming the URL without its password (exit code 3).
- **Migrations.** Alembic (alembic.ini, migrations/), run at start-up by every process under a
  transaction-level ``pg_advisory_xact_lock``, so hosts starting together do not race; a database
  at a revision this code does not know (a newer release migrated it) refuses to start.
- **Views** are coalesced in memory and written at most once a second, as in ``JsonStore``.

Command line: ``python -m pg_store migrate`` and ``python -m pg_store import-json PATH`` (a
JSON store, the book's format included, copied in idempotently), both on ``DATABASE_URL``.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import metrics
from authentication import ANONYMOUS_PREFIX
from models import MAX_QUANTITY, normalize_username
from store import (
    ACTIVITY_GRANULARITY,
    ALL_CLIENTS,
    MAX_FAVOURITES,
    MAX_HISTORY,
    MAX_PENDING_OWNERS,
    UPGRADE_MEMORY,
    Attempt,
    ChallengeRequired,
    Device,
    Lockout,
    Personal,
    RateLimited,
    Rotation,
    StoreError,
    StoreUnavailable,
    UnknownOwner,
    User,
    UsernameTaken,
    Visitor,
    _merge_history,
    account_attempt,
    client_key,
    device_trusted,
    failure_keys,
    pair_attempt,
    typed_history,
    without,
)
from usernames import lookalike_keys

log = logging.getLogger("uvicorn.error")
T = TypeVar("T")
HERE = Path(__file__).resolve().parent
CHANNEL = "farm_auth_revocations"
MIGRATION_LOCK = 0x6661726D617574  # pg_advisory_xact_lock key of the migrations ("farmaut")
CACHE_SECONDS = 30.0  # a cached session, account or visitor is re-read after this long
CACHE_ENTRIES = 100_000  # per kind; the oldest goes first
ACQUIRE_TIMEOUT = 5.0  # seconds to wait for a pooled connection (all busy under a burst) before a 503
COMMAND_TIMEOUT = 5.0  # seconds for one statement before a 503
CONNECT_TIMEOUT = 3.0
LISTENER_NAME = "farm-auth listener"  # its application_name in pg_stat_activity
LISTENER_HEARTBEAT = 1.0  # seconds between checks that the LISTEN connection is alive
TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# what a lost, restarting or overloaded database raises (InternalClientError: a connection
# broken in the middle of an operation, e.g. "another operation is in progress" during a restart)
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, asyncio.TimeoutError)
ALL = "*"  # the NOTIFY payload that drops every cached entry
# The last note of a NOTIFY: when it was sent (store_notify_lag_seconds). Shaped as a session note
# (``s:`` + a key no session has), so a process of the previous release drops nothing for it.
SENT_AT = "s:@"
TABLES = ("users", "username_keys", "anonymous", "cart_items", "history", "favourites", "preferences", "sessions",
          "device_tokens", "spent_challenges",
          "login_failures", "anonymous_logins", "request_counts", "upgraded")


def redact(url: str) -> str:
    """``url`` without its password (``***``), fit for a log line or an error message."""
    try:
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        query = "" if "password" in parts.query.lower() else parts.query
        return urlunsplit((parts.scheme, f"{userinfo}{at}{hostport}", parts.path, query, ""))
    except ValueError:
        return "(an unparseable DATABASE_URL)"


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy (Alembic) with the psycopg 3 driver."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def _owner(owner: str) -> tuple[str, str | None, str | None]:
    """``(owner, user_id, anonymous_id)``: an owner is a visitor (``anonymous_...``) or an account."""
    return (owner, None, owner) if owner.startswith(ANONYMOUS_PREFIX) else (owner, owner, None)


def _nul_free(key: str) -> str:
    """``key`` as PostgreSQL text can hold it: a name with a NUL (a login attempt may send one;
    no account has one) becomes a digest of itself."""
    return key if "\0" not in key else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(row["id"], row["username"], row["password"])


class _Tx:
    """A transaction's connection and the cache entries it revokes (sent by NOTIFY at commit)."""

    __slots__ = ("conn", "notes")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.notes: list[str] = []

    def revoke(self, note: str) -> None:
        self.notes.append(note)


def database_url_from_environment() -> str | None:
    """``DATABASE_URL`` from the environment or ``.env``, as the service reads it (the tools need
    none of the service's other settings)."""
    from pydantic import SecretStr
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class DatabaseSettings(BaseSettings):
        model_config = SettingsConfigDict(env_file=".env", extra="ignore")
        database_url: SecretStr | None = None

    secret = DatabaseSettings().database_url
    return secret.get_secret_value() if secret else None


# -- migrations (blocking: psycopg through SQLAlchemy, run in a thread) ---------------------------

def migrate(url: str) -> str | None:
    """Upgrade the database to the newest revision, under an advisory lock; the revision it was
    at. Raises ``StoreError`` for a revision this code does not know."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool, text

    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    script = ScriptDirectory.from_config(config)
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool,
                           connect_args={"connect_timeout": int(CONNECT_TIMEOUT)})
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in {r.revision for r in script.walk_revisions()}:
                raise StoreError(f"the database at {redact(url)} is at schema revision {current!r}, which this "
                                 f"version of the service does not know (a newer version migrated it); run that "
                                 f"version, or restore a backup taken before it (known: up to {script.get_current_head()!r})")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        return current
    finally:
        engine.dispose()


class PostgresStore:
    def __init__(self, url: str, pool_size: int = 10, startup_timeout: float = 30.0) -> None:
        self._url = url
        self._pool_size = pool_size
        self._startup_timeout = startup_timeout
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        # the cache: key -> (read at, monotonic; value); emptied whenever the listener is not live
        self._sessions: dict[str, tuple[float, User]] = {}
        self._users: dict[str, tuple[float, User]] = {}
        self._visitors: dict[str, tuple[float, Visitor]] = {}
        self._gone: dict[str, None] = {}  # session and visitor ids found missing: never valid again
        self._generation = 0  # bumped by every invalidation: a read that overlapped one is not kept
        self._live = False  # the LISTEN connection is up: the cache may be used
        self._listening = asyncio.Event()
        # views noted and not yet written, as in JsonStore
        self._views: dict[str, dict[int, float]] = {}
        self._flushing: dict[str, dict[int, float]] = {}
        self._last_view = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Wait for the database (bounded), migrate it, start the pool and the listener."""
        await self._wait_for_database()
        try:
            await asyncio.to_thread(migrate, self._url)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001  (psycopg/SQLAlchemy errors name no password)
            raise StoreError(f"migrating the database at {redact(self._url)} failed: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        try:
            # min_size 0: no floor to restore, so an outage logs no traceback a second from the pool
            self._pool = await asyncpg.create_pool(self._url, min_size=0, max_size=self._pool_size,
                                                   command_timeout=COMMAND_TIMEOUT, timeout=CONNECT_TIMEOUT,
                                                   init=_init_connection)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot connect to the database at {redact(self._url)}: {exc}") from None
        self._listener = asyncio.create_task(self._listen())
        try:  # serving without it is correct (no cache), but start with it when the database lets us
            await asyncio.wait_for(self._listening.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("the LISTEN connection is not up yet: serving without the cache meanwhile")

    async def _wait_for_database(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            try:
                conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT)
            except (asyncpg.InvalidPasswordError, asyncpg.InvalidCatalogNameError,
                    asyncpg.InvalidAuthorizationSpecificationError) as exc:
                raise StoreError(f"cannot use the database at {redact(self._url)}: {exc}") from None
            except (*DB_ERRORS, asyncpg.ClientConfigurationError) as exc:
                if time.monotonic() >= deadline:
                    raise StoreError(f"the database at {redact(self._url)} is unreachable (waited "
                                     f"{self._startup_timeout:g} s): {type(exc).__name__}: {exc}") from None
                log.warning("waiting for the database at %s: %s", redact(self._url), type(exc).__name__)
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            else:
                await conn.close()
                return

    async def ping(self) -> None:
        """One round trip on a pooled connection (readiness); ``StoreUnavailable`` if it fails."""
        await self._read(lambda c: c.fetchval("SELECT 1"))

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
        self._forget_all()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), COMMAND_TIMEOUT)
            except (*DB_ERRORS,):
                self._pool.terminate()

    # -- the cache and its invalidation -----------------------------------------------------------

    async def _listen(self) -> None:
        """One LISTEN connection for this process, reconnected when lost; the cache is used only
        while it is up, and emptied whenever it (re)starts or stops."""
        while not self._closing:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT,
                                             server_settings={"application_name": LISTENER_NAME})
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._forget_all()
                self._live = True
                self._listening.set()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), LISTENER_HEARTBEAT)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)  # a dead peer raises
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (whatever broke it, reconnect)
                if self._live:
                    log.warning("lost the LISTEN connection (%s): serving without the cache until it is back",
                                type(exc).__name__)
            finally:
                self._live = False
                self._listening.clear()
                self._forget_all()
                if conn is not None:
                    conn.terminate()
            if lost.is_set() and not self._closing:
                log.warning("the LISTEN connection closed: serving without the cache until it is back")
            await asyncio.sleep(0.2)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        notes = payload.split(" ")
        if notes[-1].startswith(SENT_AT):  # the sender's clock at commit: the lag, for the metric
            with contextlib.suppress(ValueError):
                metrics.notify_heard(float(notes.pop().removeprefix(SENT_AT)))
        self._forget(notes)

    def _forget_all(self) -> None:
        self._generation += 1
        self._sessions.clear()
        self._users.clear()
        self._visitors.clear()

    def _forget(self, notes: Iterable[str]) -> None:
        """Drop what ``notes`` name: ``s:<session>``, ``u:<account>`` (and its sessions),
        ``a:<visitor>``, or ``*`` (everything)."""
        self._generation += 1
        for note in notes:
            kind, _, key = note.partition(":")
            if kind == "s":
                self._sessions.pop(key, None)
            elif kind == "a":
                self._visitors.pop(key, None)
            elif kind == "u":
                self._users.pop(key, None)
                for sid in [sid for sid, (_, user) in self._sessions.items() if user.id == key]:
                    del self._sessions[sid]
            else:  # ``*``: a bulk change (import-json) may have brought ids back
                self._gone.clear()
                self._forget_all()

    def _remember_gone(self, key: str) -> None:
        if len(self._gone) >= CACHE_ENTRIES:
            del self._gone[next(iter(self._gone))]
        self._gone[key] = None

    def _keep(self, cache: dict[str, tuple[float, Any]], key: str, value: Any, generation: int) -> None:
        if self._live and generation == self._generation:
            if len(cache) >= CACHE_ENTRIES:
                del cache[next(iter(cache))]
            cache[key] = (time.monotonic(), value)

    # -- running statements -----------------------------------------------------------------------

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await fn(conn)
        except DB_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def _transact(self, fn: Callable[[_Tx], Awaitable[T]], isolation: str = "read_committed") -> T:
        """Run ``fn`` in one transaction; its NOTIFYs go out with the commit and this process's
        cache drops the same entries right after it."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        started = time.perf_counter()
        for attempt in range(3):
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, \
                        conn.transaction(isolation=isolation):
                    tx = _Tx(conn)
                    result = await fn(tx)
                    if tx.notes:
                        payload = " ".join([*tx.notes, f"{SENT_AT}{time.time():.6f}"])
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload if len(payload) < 7000 else ALL)
                if tx.notes:
                    self._forget(tx.notes)
                metrics.commit_took(started)
                return result
            except TRANSIENT as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
            except DB_ERRORS as exc:
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    # -- accounts ---------------------------------------------------------------------------------

    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User:
        async def tx(t: _Tx) -> User:
            user_id = str(uuid.uuid4())
            inserted = await t.conn.fetchval(
                "INSERT INTO users (id, username, name_key, password) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (name_key) DO NOTHING RETURNING id", user_id, username, normalize_username(username),
                password_hash)
            if inserted is None:
                raise UsernameTaken(username)
            keys = sorted(lookalike_keys(username))  # sorted: two registrations lock keys in one order
            held = await t.conn.fetchval(
                "WITH new AS (INSERT INTO username_keys (key, user_id) SELECT unnest($1::text[]), $2 "
                "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM new", keys, user_id)
            if held != len(keys):  # another account has one: the transaction, user row included, rolls back
                raise UsernameTaken(username)
            if merge_from:
                await self._merge(t, merge_from, user_id)
            return User(user_id, username, password_hash)

        return await self._transact(tx)

    async def get_user(self, user_id: str) -> User | None:
        entry = self._users.get(user_id)
        if entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS:
            metrics.cache_lookup(True)
            return entry[1]
        metrics.cache_lookup(False)
        generation = self._generation
        row = await self._read(lambda c: c.fetchrow("SELECT id, username, password FROM users WHERE id = $1", user_id))
        if row is None:
            return None
        user = _user(row)
        self._keep(self._users, user_id, user, generation)
        return user

    async def find_user(self, username: str) -> User | None:
        if "\0" in username:  # no account has one, and PostgreSQL text cannot hold it
            return None
        row = await self._read(lambda c: c.fetchrow(
            "SELECT id, username, password FROM users WHERE name_key = $1", normalize_username(username)))
        return _user(row) if row else None

    async def find_lookalike(self, username: str) -> User | None:
        if "\0" in username:
            return None
        row = await self._read(lambda c: c.fetchrow(
            "SELECT id, username, password FROM users WHERE name_key = $1 UNION ALL "
            "SELECT u.id, u.username, u.password FROM username_keys k JOIN users u ON u.id = k.user_id "
            "WHERE k.key = ANY($2::text[]) LIMIT 1", normalize_username(username), list(lookalike_keys(username))))
        return _user(row) if row else None

    async def list_users(self, limit: int, after: str | None = None) -> list[User]:
        """Ordered by normalised username (``COLLATE "C"``: code points, as JsonStore's index)."""
        rows = await self._read(lambda c: c.fetch(
            "SELECT id, username, password FROM users WHERE $1::text IS NULL OR name_key > $1 "
            "ORDER BY name_key LIMIT $2", after, limit))
        return [_user(r) for r in rows]

    async def delete_user(self, user_id: str) -> bool:
        """The account and, by cascade, its sessions, cart, history, favourites, preferences."""
        async def tx(t: _Tx) -> bool:
            deleted = await t.conn.fetchval("DELETE FROM users WHERE id = $1 RETURNING id", user_id)
            if deleted is None:
                return False
            self._views.pop(user_id, None)
            t.revoke("u:" + user_id)
            return True

        return await self._transact(tx)

    async def set_password(self, user_id: str, password_hash: str) -> None:
        async def tx(t: _Tx) -> None:
            if await t.conn.fetchval("UPDATE users SET password = $2 WHERE id = $1 RETURNING id", user_id,
                                     password_hash):
                t.revoke("u:" + user_id)

        await self._transact(tx)

    async def change_password(self, user_id: str, password_hash: str, keep_session: str | None) -> bool:
        async def tx(t: _Tx) -> bool:
            if await t.conn.fetchval("UPDATE users SET password = $2 WHERE id = $1 RETURNING id", user_id,
                                     password_hash) is None:
                return False
            await t.conn.execute("DELETE FROM sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2", user_id,
                                 keep_session)
            await t.conn.execute("DELETE FROM device_tokens WHERE user_id = $1", user_id)
            t.revoke("u:" + user_id)
            return True

        return await self._transact(tx)

    # -- anonymous visitors -----------------------------------------------------------------------

    async def add_anonymous(self, client: str, limit_per_hour: int, global_limit_per_hour: int = 0) -> str:
        async def tx(t: _Tx) -> str:
            now = time.time()
            for key, limit in ((client_key(client), limit_per_hour), (ALL_CLIENTS, global_limit_per_hour)):
                if not limit:
                    continue
                row = await _locked(t.conn, "anonymous_logins", key, "since, count", now)
                since, count = row["since"], row["count"]
                if now - since >= 3600:
                    since, count = now, 0
                if count >= limit:
                    raise (RateLimited if key != ALL_CLIENTS else ChallengeRequired)(since + 3600 - now)
                await t.conn.execute("UPDATE anonymous_logins SET since = $2, count = $3 WHERE key = $1", key, since,
                                     count + 1)
            anonymous_id = ANONYMOUS_PREFIX + str(uuid.uuid4())
            await t.conn.execute("INSERT INTO anonymous (id, created_at, last_active_at) VALUES ($1, $2, $2)",
                                 anonymous_id, now)
            return anonymous_id

        return await self._transact(tx)

    async def anonymous_exists(self, anonymous_id: str) -> bool:
        return await self._visitor(anonymous_id) is not None

    async def _visitor(self, anonymous_id: str) -> Visitor | None:
        entry = self._visitors.get(anonymous_id)
        if entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS:
            metrics.cache_lookup(True)
            return entry[1]
        metrics.cache_lookup(anonymous_id in self._gone)
        if anonymous_id in self._gone:
            return None
        generation = self._generation
        visitor = await self.get_anonymous(anonymous_id)
        if visitor is not None:
            self._keep(self._visitors, anonymous_id, visitor, generation)
        else:
            self._remember_gone(anonymous_id)
        return visitor

    async def get_anonymous(self, anonymous_id: str) -> Visitor | None:
        row = await self._read(lambda c: c.fetchrow(
            "SELECT created_at, last_active_at FROM anonymous WHERE id = $1", anonymous_id))
        return Visitor(anonymous_id, row["created_at"], row["last_active_at"]) if row else None

    async def touch_anonymous(self, anonymous_id: str) -> None:
        """Record activity at most once a ``ACTIVITY_GRANULARITY`` per visitor and process."""
        visitor = await self._visitor(anonymous_id)
        if visitor is None or time.time() - visitor.last_active_at < ACTIVITY_GRANULARITY:
            return
        now = time.time()
        await self._transact(lambda t: t.conn.execute(
            "UPDATE anonymous SET last_active_at = $2 WHERE id = $1", anonymous_id, now))
        entry = self._visitors.get(anonymous_id)
        if entry is not None:
            self._visitors[anonymous_id] = (entry[0], Visitor(anonymous_id, visitor.created_at, now))

    async def purge_anonymous(self, idle_seconds: float) -> int:
        async def tx(t: _Tx) -> int:
            gone = await t.conn.fetch("DELETE FROM anonymous WHERE last_active_at < $1 RETURNING id",
                                      time.time() - idle_seconds)
            for row in gone:
                self._views.pop(row["id"], None)
            if gone:
                t.revoke(ALL)
            return len(gone)

        return await self._transact(tx)

    # -- carts ------------------------------------------------------------------------------------

    async def get_cart(self, owner: str) -> dict[int, int]:
        return await self._read(lambda c: _cart(c, owner))

    async def set_cart_item(self, owner: str, item_id: int, quantity: int) -> dict[int, int]:
        async def tx(t: _Tx) -> dict[int, int]:
            await _lock_owner(t.conn, owner)
            await t.conn.execute(
                "INSERT INTO cart_items (owner, user_id, anonymous_id, item_id, quantity) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (owner, item_id) DO UPDATE SET quantity = excluded.quantity", *_owner(owner), item_id,
                quantity)
            return await _cart(t.conn, owner)

        return await self._transact(tx)

    async def remove_cart_item(self, owner: str, item_id: int) -> dict[int, int]:
        """Raises ``KeyError`` when the item is not in the cart."""
        async def tx(t: _Tx) -> dict[int, int]:
            await _lock_owner(t.conn, owner)
            if await t.conn.fetchval("DELETE FROM cart_items WHERE owner = $1 AND item_id = $2 RETURNING item_id",
                                     owner, item_id) is None:
                raise KeyError(item_id)
            return await _cart(t.conn, owner)

        return await self._transact(tx)

    async def _merge(self, t: _Tx, anonymous_id: str, user_id: str) -> None:
        """A visitor's data into an account (register or login with its token), as JsonStore's
        merge: cart quantities added (capped), history by time, favourites unioned, the account's
        own preferences kept; the visitor goes, and ``upgraded`` remembers where it went."""
        conn = t.conn
        if await conn.fetchval("SELECT id FROM anonymous WHERE id = $1 FOR UPDATE", anonymous_id) is None:
            return
        await conn.execute(
            "INSERT INTO cart_items (owner, user_id, item_id, quantity) "
            "SELECT $2, $2, item_id, least(quantity, $3) FROM cart_items WHERE owner = $1 "
            "ON CONFLICT (owner, item_id) DO UPDATE SET quantity = least(cart_items.quantity + excluded.quantity, $3)",
            anonymous_id, user_id, MAX_QUANTITY)
        visitor_history = self._history_items(anonymous_id, await _history_row(conn, anonymous_id))
        if visitor_history:
            row = await _history_row(conn, user_id, lock=True)
            await _put_history(conn, user_id, _merge_history(row.get("items", []), visitor_history),
                               row.get("cleared_at"))
        await conn.execute("INSERT INTO favourites (owner, user_id, item_id) SELECT $2, $2, item_id FROM favourites "
                           "WHERE owner = $1 ON CONFLICT DO NOTHING", anonymous_id, user_id)
        await conn.execute("DELETE FROM favourites WHERE owner = $1 AND item_id > (SELECT item_id FROM favourites "
                           "WHERE owner = $1 ORDER BY item_id OFFSET $2 LIMIT 1)", user_id, MAX_FAVOURITES - 1)
        await conn.execute(
            "INSERT INTO preferences (owner, user_id, prefs) SELECT $2, $2, prefs FROM preferences WHERE owner = $1 "
            "ON CONFLICT (owner) DO UPDATE SET prefs = excluded.prefs || preferences.prefs", anonymous_id, user_id)
        await conn.execute("DELETE FROM anonymous WHERE id = $1", anonymous_id)  # its rows go by cascade
        await conn.execute("INSERT INTO upgraded (anonymous_id, user_id, at) VALUES ($1, $2, $3) ON CONFLICT "
                           "(anonymous_id) DO UPDATE SET user_id = excluded.user_id, at = excluded.at",
                           anonymous_id, user_id, time.time())
        t.revoke("a:" + anonymous_id)

    # -- login sessions ---------------------------------------------------------------------------

    async def session_user(self, session_id: str, user_id: str) -> User | None:
        """The account behind a live login session: from the cache when this process has read it
        in the last ``CACHE_SECONDS`` and no revocation has been heard since."""
        entry = self._sessions.get(session_id)
        if entry is not None and entry[1].id == user_id and time.monotonic() - entry[0] < CACHE_SECONDS:
            metrics.cache_lookup(True)
            return entry[1]
        metrics.cache_lookup(session_id in self._gone)
        if session_id in self._gone:
            return None
        generation = self._generation
        row = await self._read(lambda c: c.fetchrow(
            "SELECT u.id, u.username, u.password FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.id = $1 AND s.user_id = $2", session_id, user_id))
        if row is None:
            self._remember_gone(session_id)  # ended, or its account deleted (a token's ids are signed)
            return None
        user = _user(row)
        self._keep(self._sessions, session_id, user, generation)
        return user

    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, grace: float = 0, max_age: float | None = None) -> Rotation | None:
        """As ``JsonStore.rotate_session``: compare-and-set on the current ``jti`` under a row lock."""
        async def tx(t: _Tx) -> Rotation | None:
            now = time.time()
            s = await t.conn.fetchrow(
                "SELECT s.jti, s.expires_at, s.created_at, s.prev_jti, s.rotated_at FROM sessions s "
                "JOIN users u ON u.id = s.user_id WHERE s.id = $1 AND s.user_id = $2 FOR UPDATE OF s",
                session_id, user_id)
            if s is None:
                return None
            created = s["created_at"] if s["created_at"] is not None else float("-inf")
            if not (max_age is not None and now - created > max_age):
                if s["jti"] == old_jti:
                    await t.conn.execute("UPDATE sessions SET jti = $2, expires_at = $3, prev_jti = $4, rotated_at = $5 "
                                         "WHERE id = $1", session_id, new_jti, expires_at, old_jti, now)
                    return Rotation(new_jti, expires_at)
                if grace and s["prev_jti"] == old_jti and now - (s["rotated_at"] or 0) < grace:
                    return Rotation(s["jti"], s["expires_at"])
            await t.conn.execute("DELETE FROM sessions WHERE id = $1", session_id)  # too old, or reuse
            t.revoke("s:" + session_id)
            return None

        return await self._transact(tx)

    async def end_session(self, session_id: str) -> None:
        async def tx(t: _Tx) -> None:
            if await t.conn.fetchval("DELETE FROM sessions WHERE id = $1 RETURNING id", session_id):
                t.revoke("s:" + session_id)

        await self._transact(tx)

    async def end_all_sessions(self, user_id: str) -> None:
        async def tx(t: _Tx) -> None:
            await t.conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
            await t.conn.execute("DELETE FROM device_tokens WHERE user_id = $1", user_id)
            t.revoke("u:" + user_id)

        await self._transact(tx)

    async def begin_login(self, name_key: str, client: str, rules: Lockout, *, user_id: str | None = None,
                          device: str | None = None, proven: bool = False) -> Attempt:
        """As ``JsonStore.begin_login``, on the counters' rows locked for the transaction."""
        async def tx(t: _Tx) -> Attempt:
            now = time.time()
            if device is not None:
                row = await t.conn.fetchrow("SELECT user_id, expires_at, at FROM device_tokens WHERE key = $1 "
                                            "FOR UPDATE", device)
                failures = device_trusted(dict(row) if row else None, user_id, rules, now)
                if failures is not None:
                    await t.conn.execute("UPDATE device_tokens SET at = $2 WHERE key = $1", device, failures)
                    return Attempt(now, name_key, client, device)
            pair_key, account_key = failure_keys(name_key, client)
            if rules.max_failures:
                row = await _locked(t.conn, "login_failures", pair_key, "at", now)
                pair = pair_attempt(list(row["at"]), rules, now)
                await _put_failures(t.conn, pair_key, pair.at, pair.until)
            if rules.max_failures_per_account:
                row = await _locked(t.conn, "login_failures", account_key, "at", now)
                account = account_attempt(list(row["at"]), rules, now, proven)
                await _put_failures(t.conn, account_key, account.at, account.until)
            return Attempt(now, name_key, client)

        return await self._transact(tx)

    async def give_back(self, attempt: Attempt) -> None:
        async def tx(t: _Tx) -> None:
            if attempt.device is not None:
                await _uncount(t.conn, "device_tokens", attempt.device, attempt.at)
                return
            for key in failure_keys(attempt.name_key, attempt.client):
                await _uncount(t.conn, "login_failures", key, attempt.at)

        await self._transact(tx)

    async def complete_login(self, user: User, attempt: Attempt, refresh_jti: str, expires_at: float,
                             merge_from: str | None = None, new_device: Device | None = None) -> str:
        session_id = uuid.uuid4().hex

        async def tx(t: _Tx) -> str:
            if await t.conn.fetchval("SELECT id FROM users WHERE id = $1 FOR KEY SHARE", user.id) is None:
                raise UnknownOwner(user.id)
            await _forget_failures(t.conn, attempt)
            if merge_from:
                await self._merge(t, merge_from, user.id)
            now = time.time()
            if new_device is not None:
                await t.conn.execute("INSERT INTO device_tokens (key, user_id, expires_at, created_at) "
                                     "VALUES ($1, $2, $3, $4)", new_device.key, user.id, new_device.expires_at, now)
            await t.conn.execute("INSERT INTO sessions (id, user_id, jti, expires_at, created_at) "
                                 "VALUES ($1, $2, $3, $4, $5)", session_id, user.id, refresh_jti, expires_at, now)
            return session_id

        return await self._transact(tx)

    async def reset_login_failures(self, attempt: Attempt) -> None:
        await self._transact(lambda t: _forget_failures(t.conn, attempt))

    async def spend_once(self, key: str, expires_at: float) -> bool:
        return bool(await self._transact(lambda t: t.conn.fetchval(
            "INSERT INTO spent_challenges (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
            key, expires_at)))

    async def count_requests(self, counts: dict[str, tuple[int, float]]) -> dict[str, int]:
        """Add this worker's counts and read everyone's totals: two statements, keys in order."""
        keys = sorted(counts)
        adding = [k for k in keys if counts[k][0]]
        asking = [k for k in keys if not counts[k][0]]

        async def tx(t: _Tx) -> dict[str, int]:
            totals = {k: 0 for k in keys}
            if adding:
                rows = await t.conn.fetch(
                    "INSERT INTO request_counts (key, count, expires_at) "
                    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[]) "
                    "ON CONFLICT (key) DO UPDATE SET count = request_counts.count + excluded.count, "
                    "expires_at = excluded.expires_at RETURNING key, count",
                    adding, [counts[k][0] for k in adding], [counts[k][1] for k in adding])
                totals.update({r["key"]: r["count"] for r in rows})
            if asking:
                rows = await t.conn.fetch("SELECT key, count FROM request_counts WHERE key = ANY($1)", asking)
                totals.update({r["key"]: r["count"] for r in rows})
            return totals

        return await self._transact(tx)

    async def prune(self) -> None:
        """Drop what has expired (each by its own index): sessions, throttling windows, ``upgraded``."""
        async def tx(t: _Tx) -> None:
            now = time.time()
            await t.conn.execute("DELETE FROM sessions WHERE expires_at < $1", now)
            await t.conn.execute("DELETE FROM login_failures WHERE until < $1", now)
            await t.conn.execute("DELETE FROM anonymous_logins WHERE since <= $1", now - 3600)
            await t.conn.execute("DELETE FROM request_counts WHERE expires_at < $1", now)
            await t.conn.execute("DELETE FROM upgraded WHERE at <= $1", now - UPGRADE_MEMORY)
            await t.conn.execute("DELETE FROM device_tokens WHERE expires_at < $1", now)
            await t.conn.execute("DELETE FROM spent_challenges WHERE expires_at < $1", now)

        await self._transact(tx)

    # -- personalisation --------------------------------------------------------------------------

    async def record_view(self, owner: str, item_id: int) -> None:
        """Note a view in memory (no I/O); ``flush_views`` makes it durable."""
        views = self._views.get(owner)
        if views is None:
            if len(self._views) >= MAX_PENDING_OWNERS:
                await self.flush_views()
            views = self._views.setdefault(owner, {})
        views.pop(item_id, None)
        self._last_view = views[item_id] = max(time.time(), self._last_view + 1e-6)
        if len(views) > MAX_HISTORY:
            del views[next(iter(views))]

    async def flush_views(self) -> int:
        """Every noted view in one transaction; the number of owners written. Views of an owner
        that is gone are dropped, except a visitor carried into an account: they go there."""
        if not self._views or self._flushing:
            return 0
        self._flushing, self._views = self._views, {}

        async def tx(t: _Tx) -> int:
            owners = sorted(self._flushing)
            present = {r["id"] for r in await t.conn.fetch(
                "SELECT id FROM users WHERE id = ANY($1) FOR KEY SHARE", owners)}
            present |= {r["id"] for r in await t.conn.fetch(
                "SELECT id FROM anonymous WHERE id = ANY($1) FOR KEY SHARE", owners)}
            moved = {r["anonymous_id"]: r["user_id"] for r in await t.conn.fetch(
                "SELECT g.anonymous_id, g.user_id FROM upgraded g JOIN users u ON u.id = g.user_id "
                "WHERE g.anonymous_id = ANY($1) FOR KEY SHARE OF u", [o for o in owners if o not in present])}
            by_owner: dict[str, list[tuple[int, float]]] = {}
            for owner, views in self._flushing.items():
                target = owner if owner in present else moved.get(owner)
                if target is not None:
                    by_owner.setdefault(target, []).extend(views.items())
            for owner in sorted(by_owner):
                row = await _history_row(t.conn, owner, lock=True)
                cleared = row.get("cleared_at") or 0.0
                items = _merge_history(row.get("items", []), [(i, at) for i, at in by_owner[owner] if at > cleared])
                await _put_history(t.conn, owner, items, row.get("cleared_at"))
            return len(by_owner)

        try:
            return await self._transact(tx)
        except BaseException:
            for owner, views in self._flushing.items():  # not written: keep them for the next try
                self._views[owner] = {**views, **self._views.get(owner, {})}
            raise
        finally:
            self._flushing = {}

    def _history_items(self, owner: str, row: dict[str, Any]) -> list[list[Any]]:
        """Stored history plus this process's unwritten views of ``owner``, newest first."""
        items = row.get("items", [])
        pending = [*self._flushing.get(owner, {}).items(), *self._views.get(owner, {}).items()]
        if not pending:
            return items
        cleared = row.get("cleared_at") or 0.0
        return _merge_history(items, [(item, at) for item, at in pending if at > cleared])

    async def get_history(self, owner: str) -> list[tuple[int, float]]:
        row = await self._read(lambda c: _history_row(c, owner))
        return typed_history(self._history_items(owner, row))

    async def get_personal(self, owner: str) -> Personal:
        row = await self._read(lambda c: c.fetchrow(_PERSONAL, owner))
        history = {"items": row["items"], "cleared_at": row["cleared_at"]} if row["items"] is not None else {}
        return Personal(typed_history(self._history_items(owner, history)),
                        list(row["favourites"]), dict(zip(row["cart_items"], row["cart_quantities"], strict=True)),
                        dict(row["prefs"]) if row["prefs"] else {})

    async def clear_history(self, owner: str) -> None:
        async def tx(t: _Tx) -> None:
            await _lock_owner(t.conn, owner)
            self._views.pop(owner, None)
            await _put_history(t.conn, owner, [], time.time())

        await self._transact(tx)

    async def get_favourites(self, owner: str) -> list[int]:
        return await self._read(lambda c: _favourites(c, owner))

    async def add_favourite(self, owner: str, item_id: int) -> list[int]:
        async def tx(t: _Tx) -> list[int]:
            await _lock_owner(t.conn, owner)
            current = await _favourites(t.conn, owner)
            if item_id in current:
                return current
            if len(current) >= MAX_FAVOURITES:
                raise ValueError(f"at most {MAX_FAVOURITES} favourites")
            await t.conn.execute("INSERT INTO favourites (owner, user_id, anonymous_id, item_id) VALUES ($1, $2, $3, $4)",
                                 *_owner(owner), item_id)
            return sorted([*current, item_id])

        return await self._transact(tx)

    async def remove_favourite(self, owner: str, item_id: int) -> list[int]:
        """Raises ``KeyError`` when the item is not a favourite."""
        async def tx(t: _Tx) -> list[int]:
            await _lock_owner(t.conn, owner)
            if await t.conn.fetchval("DELETE FROM favourites WHERE owner = $1 AND item_id = $2 RETURNING item_id",
                                     owner, item_id) is None:
                raise KeyError(item_id)
            return await _favourites(t.conn, owner)

        return await self._transact(tx)

    async def get_preferences(self, owner: str) -> dict[str, str]:
        return await self._read(lambda c: _preferences(c, owner))

    async def set_preferences(self, owner: str, values: dict[str, str]) -> dict[str, str]:
        async def tx(t: _Tx) -> dict[str, str]:
            await _lock_owner(t.conn, owner)
            if not values:
                return await _preferences(t.conn, owner)
            return dict(await t.conn.fetchval(
                "INSERT INTO preferences (owner, user_id, anonymous_id, prefs) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (owner) DO UPDATE SET prefs = preferences.prefs || excluded.prefs RETURNING prefs",
                *_owner(owner), values))

        return await self._transact(tx)

    async def export_user(self, user_id: str) -> dict[str, Any] | None:
        """Everything kept about an account, read in one REPEATABLE READ transaction (one instant)."""
        async def tx(t: _Tx) -> dict[str, Any] | None:
            conn = t.conn
            row = await conn.fetchrow("SELECT id, username FROM users WHERE id = $1", user_id)
            if row is None:
                return None
            sessions = await conn.fetch(
                "SELECT id, created_at, expires_at FROM sessions WHERE user_id = $1 AND expires_at >= $2 "
                "ORDER BY coalesce(created_at, 0), id", user_id, time.time())
            history = self._history_items(user_id, await _history_row(conn, user_id))
            return {
                "profile": {"id": row["id"], "username": row["username"]},
                "cart": await _cart(conn, user_id),
                "history": typed_history(history),
                "favourites": await _favourites(conn, user_id),
                "preferences": await _preferences(conn, user_id),
                "sessions": [dict(s) for s in sessions],
            }

        return await self._transact(tx, isolation="repeatable_read")


# -- statements shared by the methods above ---------------------------------------------------------

async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


_PLACEHOLDER = {  # a counter row before its first count: written over, or rolled back, by the caller
    "anonymous_logins": "INSERT INTO anonymous_logins (key, since, count) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
    "login_failures": "INSERT INTO login_failures (key, until) VALUES ($1, $2) ON CONFLICT DO NOTHING",
}


async def _locked(conn: asyncpg.Connection, table: str, key: str, columns: str, now: float) -> Any:
    """The row ``key`` of a counter table, locked until the transaction ends; inserted first if
    missing, so that two first attempts queue on one row instead of both counting from zero."""
    await conn.execute(_PLACEHOLDER[table], key, now)
    return await conn.fetchrow(f"SELECT {columns} FROM {table} WHERE key = $1 FOR UPDATE", key)


async def _put_failures(conn: asyncpg.Connection, key: str, at: list[float], until: float) -> None:
    await conn.execute("UPDATE login_failures SET at = $2, until = $3 WHERE key = $1", key, at, until)


async def _uncount(conn: asyncpg.Connection, table: str, key: str, attempt: float) -> None:
    """Take ``attempt`` out of a counter's failure times (``table``: login_failures or device_tokens)."""
    failures = without(await conn.fetchval(f"SELECT at FROM {table} WHERE key = $1 FOR UPDATE", key), attempt)
    if failures is not None:
        await conn.execute(f"UPDATE {table} SET at = $2 WHERE key = $1", key, failures)


async def _forget_failures(conn: asyncpg.Connection, attempt: Attempt) -> None:
    """As ``JsonStore._forget_failures``."""
    if attempt.device is not None:
        await conn.execute("UPDATE device_tokens SET at = '{}' WHERE key = $1", attempt.device)
        return
    pair_key, account_key = failure_keys(attempt.name_key, attempt.client)
    await conn.execute("DELETE FROM login_failures WHERE key = $1", pair_key)
    await _uncount(conn, "login_failures", account_key, attempt.at)


async def _lock_owner(conn: asyncpg.Connection, owner: str) -> None:
    """Lock the owner's row for this write (a visitor being upgraded or purged, an account being
    deleted, waits or is waited for); ``UnknownOwner`` if it is gone."""
    table = "anonymous" if owner.startswith(ANONYMOUS_PREFIX) else "users"
    if await conn.fetchval(f"SELECT id FROM {table} WHERE id = $1 FOR NO KEY UPDATE", owner) is None:
        raise UnknownOwner(owner)


async def _cart(conn: asyncpg.Connection, owner: str) -> dict[int, int]:
    rows = await conn.fetch("SELECT item_id, quantity FROM cart_items WHERE owner = $1 ORDER BY item_id", owner)
    return {r["item_id"]: r["quantity"] for r in rows}


async def _favourites(conn: asyncpg.Connection, owner: str) -> list[int]:
    return [r["item_id"] for r in await conn.fetch(
        "SELECT item_id FROM favourites WHERE owner = $1 ORDER BY item_id", owner)]


async def _preferences(conn: asyncpg.Connection, owner: str) -> dict[str, str]:
    prefs = await conn.fetchval("SELECT prefs FROM preferences WHERE owner = $1", owner)
    return dict(prefs) if prefs else {}


_PERSONAL = """
SELECT h.items, h.cleared_at, p.prefs,
       ARRAY(SELECT item_id FROM favourites WHERE owner = $1 ORDER BY item_id) AS favourites,
       ARRAY(SELECT item_id FROM cart_items WHERE owner = $1 ORDER BY item_id) AS cart_items,
       ARRAY(SELECT quantity FROM cart_items WHERE owner = $1 ORDER BY item_id) AS cart_quantities
FROM (SELECT 1) AS one
LEFT JOIN history h ON h.owner = $1
LEFT JOIN preferences p ON p.owner = $1
"""


async def _history_row(conn: asyncpg.Connection, owner: str, lock: bool = False) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT items, cleared_at FROM history WHERE owner = $1" + (" FOR UPDATE" if lock else ""),
                              owner)
    return {"items": row["items"], "cleared_at": row["cleared_at"]} if row else {}


async def _put_history(conn: asyncpg.Connection, owner: str, items: list[list[Any]], cleared_at: float | None) -> None:
    await conn.execute(
        "INSERT INTO history (owner, user_id, anonymous_id, items, cleared_at) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (owner) DO UPDATE SET items = excluded.items, cleared_at = excluded.cleared_at",
        *_owner(owner), items, cleared_at)


# -- moving in, and the command line -------------------------------------------------------------

async def truncate_all(url: str) -> None:
    """Empty every table (tests; never run by the service). Running services drop their caches."""
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}; SELECT pg_notify('{CHANNEL}', '{ALL}')")
    finally:
        await conn.close()


async def import_json(url: str, path: Path) -> dict[str, int]:
    """Copy the JSON store at ``path`` (``users.json``, its journal if a crash left one, the book's
    format included) into the database, in one transaction; rows are upserted by their keys, so
    importing the same store twice leaves the same database. The counts of rows written per table;
    ``skipped`` counts rows whose owner is not in the store, or an account whose normalised name
    another account in the database already has."""
    from store import JsonStore

    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    source = JsonStore(path)
    await source.open()
    try:
        tables = source.t
        counts = dict.fromkeys(("users", "anonymous", "sessions", "cart_items", "history", "favourites", "preferences",
                                "login_failures", "anonymous_logins", "request_counts", "upgraded", "device_tokens",
                                "spent_challenges", "skipped"), 0)
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
        await _init_connection(conn)
        try:
            async with conn.transaction():
                await _import_tables(conn, tables, counts)
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, ALL)
        finally:
            await conn.close()
    finally:
        await source.close()
    return counts


async def _import_tables(conn: asyncpg.Connection, t: dict[str, dict[str, Any]], counts: dict[str, int]) -> None:
    # accounts in bulk (a store may hold 100,000 of them): COPY into a scratch table, then one upsert
    await conn.execute('CREATE TEMP TABLE import_users (id text, username text, name_key text COLLATE "C", '
                       "password text) ON COMMIT DROP")
    await conn.copy_records_to_table("import_users", records=[
        (user_id, doc["username"], normalize_username(doc["username"]), doc["password"])
        for user_id, doc in t["users"].items()])
    clash = "EXISTS (SELECT 1 FROM users u WHERE u.name_key = i.name_key AND u.id <> i.id)"
    counts["skipped"] += await conn.fetchval(f"SELECT count(*) FROM import_users i WHERE {clash}")
    rows = await conn.fetch(
        f"INSERT INTO users (id, username, name_key, password) SELECT id, username, name_key, password "
        f"FROM import_users i WHERE NOT {clash} ON CONFLICT (id) DO UPDATE SET username = excluded.username, "
        f"name_key = excluded.name_key, password = excluded.password RETURNING id")
    users = {r["id"] for r in rows}
    counts["users"] = len(users)
    await _import_keys(conn, t["users"], users)
    visitors: set[str] = set()
    for visitor_id, doc in t["anonymous"].items():
        await conn.execute(
            "INSERT INTO anonymous (id, created_at, last_active_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE "
            "SET created_at = excluded.created_at, last_active_at = excluded.last_active_at",
            visitor_id, doc["created_at"], doc["last_active_at"])
        visitors.add(visitor_id)
        counts["anonymous"] += 1
    owners = users | visitors
    for session_id, s in t["sessions"].items():
        if s["user_id"] not in users:
            counts["skipped"] += 1
            continue
        await conn.execute(
            "INSERT INTO sessions (id, user_id, jti, expires_at, created_at, prev_jti, rotated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, "
            "jti = excluded.jti, expires_at = excluded.expires_at, created_at = excluded.created_at, "
            "prev_jti = excluded.prev_jti, rotated_at = excluded.rotated_at",
            session_id, s["user_id"], s["jti"], s["expires_at"], s.get("created_at"), s.get("prev_jti"),
            s.get("rotated_at"))
        counts["sessions"] += 1
    for table in ("carts", "history", "favourites", "preferences"):
        for owner, value in t[table].items():
            if owner not in owners:
                counts["skipped"] += 1
                continue
            await _import_owned(conn, table, owner, value, counts)
    for key, doc in t["login_failures"].items():
        await conn.execute(
            "INSERT INTO login_failures (key, at, until) VALUES ($1, $2, $3) "
            "ON CONFLICT (key) DO UPDATE SET at = excluded.at, until = excluded.until",
            _nul_free(key), [float(x) for x in doc.get("at", [])], doc["until"])
        counts["login_failures"] += 1
    for key, doc in t["devices"].items():  # of accounts that were imported
        status = await conn.execute(
            "INSERT INTO device_tokens (key, user_id, expires_at, at, created_at) "
            "SELECT $1, $2::text, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM users WHERE id = $2::text) "
            "ON CONFLICT (key) DO UPDATE SET user_id = excluded.user_id, expires_at = excluded.expires_at, "
            "at = excluded.at, created_at = excluded.created_at",
            key, str(doc["user_id"]), doc["expires_at"], [float(x) for x in doc.get("at", [])],
            doc.get("created_at", 0.0))
        counts["device_tokens" if status.endswith(" 1") else "skipped"] += 1
    for key, doc in t["spent"].items():
        await conn.execute("INSERT INTO spent_challenges (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                           key, doc["expires_at"])
        counts["spent_challenges"] += 1
    for key, doc in t["anonymous_logins"].items():
        await conn.execute("INSERT INTO anonymous_logins (key, since, count) VALUES ($1, $2, $3) ON CONFLICT (key) "
                           "DO UPDATE SET since = excluded.since, count = excluded.count", key, doc["since"], doc["count"])
        counts["anonymous_logins"] += 1
    for key, doc in t["request_counts"].items():
        await conn.execute("INSERT INTO request_counts (key, count, expires_at) VALUES ($1, $2, $3) ON CONFLICT (key) "
                           "DO UPDATE SET count = excluded.count, expires_at = excluded.expires_at",
                           key, doc["count"], doc["expires_at"])
        counts["request_counts"] += 1
    for visitor_id, doc in t["upgraded"].items():
        if doc["user_id"] not in users:
            counts["skipped"] += 1
            continue
        await conn.execute("INSERT INTO upgraded (anonymous_id, user_id, at) VALUES ($1, $2, $3) ON CONFLICT "
                           "(anonymous_id) DO UPDATE SET user_id = excluded.user_id, at = excluded.at",
                           visitor_id, doc["user_id"], doc["at"])
        counts["upgraded"] += 1


async def _import_keys(conn: asyncpg.Connection, docs: dict[str, Any], users: set[str]) -> None:
    """The look-alike keys of the imported accounts: keys of a name they no longer have go; a key
    another account holds stays its (accounts that looked alike before the rule keep working)."""
    await conn.execute('CREATE TEMP TABLE import_keys (key text COLLATE "C", user_id text) ON COMMIT DROP')
    await conn.copy_records_to_table("import_keys", records=[
        (k, user_id) for user_id in sorted(users) for k in sorted(lookalike_keys(docs[user_id]["username"]))])
    await conn.execute("DELETE FROM username_keys k WHERE k.user_id = ANY($1::text[]) AND NOT EXISTS "
                       "(SELECT 1 FROM import_keys i WHERE i.key = k.key AND i.user_id = k.user_id)", list(users))
    await conn.execute("INSERT INTO username_keys (key, user_id) SELECT key, user_id FROM import_keys "
                       "ORDER BY user_id, key ON CONFLICT DO NOTHING")


async def _import_owned(conn: asyncpg.Connection, table: str, owner: str, value: Any, counts: dict[str, int]) -> None:
    """One owner's cart, history, favourites or preferences, replacing what the database has."""
    ids = _owner(owner)
    if table == "carts":
        await conn.execute("DELETE FROM cart_items WHERE owner = $1", owner)
        await conn.executemany("INSERT INTO cart_items (owner, user_id, anonymous_id, item_id, quantity) "
                               "VALUES ($1, $2, $3, $4, $5)", [(*ids, int(i), q) for i, q in value.items()])
        counts["cart_items"] += len(value)
    elif table == "history":
        await _put_history(conn, owner, value.get("items", []), value.get("cleared_at"))
        counts["history"] += 1
    elif table == "favourites":
        await conn.execute("DELETE FROM favourites WHERE owner = $1", owner)
        await conn.executemany("INSERT INTO favourites (owner, user_id, anonymous_id, item_id) VALUES ($1, $2, $3, $4)",
                               [(*ids, int(i)) for i in value])
        counts["favourites"] += len(value)
    else:
        await conn.execute("INSERT INTO preferences (owner, user_id, anonymous_id, prefs) VALUES ($1, $2, $3, $4) "
                           "ON CONFLICT (owner) DO UPDATE SET prefs = excluded.prefs", *ids, value)
        counts["preferences"] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pg_store", description="The PostgreSQL store's tools.")
    parser.add_argument("--database-url", help="default: DATABASE_URL (environment or .env)")
    commands = parser.add_subparsers(dest="command", required=True)
    migrator = commands.add_parser("migrate", help="upgrade the schema to the newest revision")
    importer = commands.add_parser("import-json", help="copy a JSON store (users.json) in, idempotently")
    importer.add_argument("path", type=Path)
    for command in (migrator, importer):  # before or after the command
        command.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    url = args.database_url or database_url_from_environment()
    if not url:
        print("DATABASE_URL is not set (or pass --database-url)", file=sys.stderr)
        return 3
    try:
        if args.command == "migrate":
            asyncio.run(PostgresStore(url, 1, 0)._wait_for_database())
            before = migrate(url)
            print(f"{redact(url)}: schema at the newest revision (it was at {before or 'none: an empty database'})")
        else:
            asyncio.run(PostgresStore(url, 1, 0)._wait_for_database())
            migrate(url)
            counts = asyncio.run(import_json(url, args.path))
            print(f"imported {args.path} into {redact(url)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (asyncpg.PostgresError, OSError) as exc:  # nothing was written: one transaction
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
