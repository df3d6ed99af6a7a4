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

This module is the machinery every query runs through (``PgBase``: the pool, the caches and their
``LISTEN``/``NOTIFY`` invalidation, ``_read`` and ``_transact``); ``pg_store`` and ``pg_visitors``
hold the SQL, ``pg_schema`` the migrations and ``pg_tools`` the command line.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import asyncpg

import metrics
from authentication import ANONYMOUS_PREFIX

from .pg_schema import CONNECT_TIMEOUT, migrate, redact
from .records import USER_FIELDS, StoreError, StoreUnavailable, User, Visitor

T = TypeVar("T")
log = logging.getLogger("uvicorn.error")
CHANNEL = "farm_auth_revocations"
CACHE_SECONDS = 30.0  # a cached session, account or visitor is re-read after this long
CACHE_ENTRIES = 100_000  # per kind; the oldest goes first
ACQUIRE_TIMEOUT = 5.0  # seconds to wait for a pooled connection (all busy under a burst) before a 503
COMMAND_TIMEOUT = 5.0  # seconds for one statement before a 503
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
          "device_tokens", "spent_challenges", "passkeys", "webauthn_challenges", "mfa_tokens", "totp_steps",
          "recovery_codes",
          "login_failures", "anonymous_logins", "request_counts", "upgraded", "audit_events")


def _owner(owner: str) -> tuple[str, str | None, str | None]:
    """``(owner, user_id, anonymous_id)``: an owner is a visitor (``anonymous_...``) or an account."""
    return (owner, None, owner) if owner.startswith(ANONYMOUS_PREFIX) else (owner, owner, None)


def _nul_free(key: str) -> str:
    """``key`` as PostgreSQL text can hold it: a name with a NUL (a login attempt may send one;
    no account has one) becomes a digest of itself."""
    return key if "\0" not in key else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


USER_COLUMNS = ", ".join(USER_FIELDS)  # the users table has a column per field of the account record
U_COLUMNS = ", ".join("u." + name for name in USER_FIELDS)


def _user(row: Any) -> User:
    return User(**{name: row[name] for name in USER_FIELDS})


class _Tx:
    """A transaction's connection and the cache entries it revokes (sent by NOTIFY at commit)."""

    __slots__ = ("conn", "notes")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.notes: list[str] = []

    def revoke(self, note: str) -> None:
        self.notes.append(note)


class PgBase:
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
