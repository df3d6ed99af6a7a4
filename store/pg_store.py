"""``PostgresStore``: accounts, login sessions and the login throttling in SQL, on ``PgBase``'s
pool and caches (pg_base.py), with ``PgVisitors`` (pg_visitors.py) for visitors and what owners
keep, and ``PgFactors`` (pg_factors.py) for passkeys and second factors. Column lists come from
the account record (``records.USER_FIELDS``), never spelled out.
"""

import time
import uuid
from typing import Any

import asyncpg

import metrics
from models import normalize_username
from usernames import lookalike_keys

from .pg_audit import PgAudit
from .pg_base import CACHE_SECONDS, U_COLUMNS, USER_COLUMNS, _locked, _Tx, _user
from .pg_factors import PgFactors
from .pg_visitors import PgVisitors
from .records import Attempt, Device, Lockout, Rotation, SessionView, UnknownOwner, User, UsernameTaken, user_doc
from .rules import (
    UPGRADE_MEMORY,
    account_attempt,
    changeable_fields,
    device_trusted,
    failure_keys,
    pair_attempt,
    without,
)


class PostgresStore(PgFactors, PgVisitors, PgAudit):
    # -- accounts ---------------------------------------------------------------------------------

    async def add_user(self, username: str, password_hash: str, merge_from: str | None = None) -> User:
        async def tx(t: _Tx) -> User:
            user_id = str(uuid.uuid4())
            user = User(user_id, username, password_hash, created_at=time.time())
            doc = user_doc(user)
            inserted = await t.conn.fetchval(
                f"INSERT INTO users (name_key, {USER_COLUMNS}) VALUES ($1, {_placeholders(2, len(doc))}) "
                "ON CONFLICT (name_key) DO NOTHING RETURNING id", normalize_username(username), *doc.values())
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
            return user

        return await self._transact(tx)

    async def get_user(self, user_id: str) -> User | None:
        entry = self._users.get(user_id)
        if entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS:
            metrics.cache_lookup(True)
            return entry[1]
        metrics.cache_lookup(False)
        generation = self._generation
        row = await self._read(lambda c: c.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id))
        if row is None:
            return None
        user = _user(row)
        self._keep(self._users, user_id, user, generation)
        return user

    async def find_user(self, username: str) -> User | None:
        if "\0" in username:  # no account has one, and PostgreSQL text cannot hold it
            return None
        row = await self._read(lambda c: c.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE name_key = $1", normalize_username(username)))
        return _user(row) if row else None

    async def find_lookalike(self, username: str) -> User | None:
        if "\0" in username:
            return None
        row = await self._read(lambda c: c.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE name_key = $1 UNION ALL "
            f"SELECT {U_COLUMNS} FROM username_keys k JOIN users u ON u.id = k.user_id "
            "WHERE k.key = ANY($2::text[]) LIMIT 1", normalize_username(username), list(lookalike_keys(username))))
        return _user(row) if row else None

    async def list_users(self, limit: int, after: str | None = None, prefix: str | None = None) -> list[User]:
        """Ordered by normalised username (``COLLATE "C"``: code points, as JsonStore's index); a
        ``prefix`` is a ``LIKE`` pattern with its wildcards escaped, a range scan of the index."""
        if (after and "\0" in after) or (prefix and "\0" in prefix):
            return []  # no name holds a NUL, and PostgreSQL text cannot
        pattern = _like_prefix(prefix) if prefix else None
        rows = await self._read(lambda c: c.fetch(
            f"SELECT {USER_COLUMNS} FROM users WHERE ($1::text IS NULL OR name_key > $1) "
            "AND ($3::text IS NULL OR name_key LIKE $3) ORDER BY name_key LIMIT $2", after, limit, pattern))
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

    async def update_user(self, user_id: str, **changes: Any) -> User | None:
        """As ``JsonStore.update_user``: one UPDATE of the named columns; every host drops its
        cached copy of the account and of its sessions (``NOTIFY``)."""
        names = changeable_fields(changes)

        async def tx(t: _Tx) -> User | None:
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
            row = await t.conn.fetchrow(f"UPDATE users SET {sets} WHERE id = $1 RETURNING {USER_COLUMNS}", user_id,
                                        *(changes[name] for name in names))
            if row is None:
                return None
            t.revoke("u:" + user_id)
            return _user(row)

        return await self._transact(tx)

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
            f"SELECT {U_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.id = $1 AND s.user_id = $2", session_id, user_id))
        if row is None:
            self._remember_gone(session_id)  # ended, or its account deleted (a token's ids are signed)
            return None
        user = _user(row)
        self._keep(self._sessions, session_id, user, generation)
        return user

    async def rotate_session(self, session_id: str, user_id: str, old_jti: str, new_jti: str,
                             expires_at: float, grace: float = 0, max_age: float | None = None, *,
                             client: str | None = None, user_agent: str | None = None) -> Rotation | None:
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
                    await t.conn.execute(
                        "UPDATE sessions SET jti = $2, expires_at = $3, prev_jti = $4, rotated_at = $5, last_used_at = $5, "
                        "client = coalesce($6, client), user_agent = coalesce($7, user_agent) WHERE id = $1",
                        session_id, new_jti, expires_at, old_jti, now, client, user_agent)
                    return Rotation(new_jti, expires_at)
                if grace and s["prev_jti"] == old_jti and now - (s["rotated_at"] or 0) < grace:
                    return Rotation(s["jti"], s["expires_at"])
            await t.conn.execute("DELETE FROM sessions WHERE id = $1", session_id)  # too old, or reuse
            t.revoke("s:" + session_id)
            return None

        return await self._transact(tx)

    async def list_sessions(self, user_id: str) -> list[SessionView]:
        rows = await self._read(lambda c: c.fetch(
            "SELECT id, created_at, coalesce(last_used_at, created_at) AS last_used_at, expires_at, client, user_agent "
            "FROM sessions WHERE user_id = $1 AND expires_at >= $2 ORDER BY coalesce(created_at, 0) DESC, id DESC",
            user_id, time.time()))
        return [SessionView(r["id"], r["created_at"], r["last_used_at"], r["expires_at"], r["client"], r["user_agent"])
                for r in rows]

    async def end_session(self, session_id: str, user_id: str | None = None) -> bool:
        async def tx(t: _Tx) -> bool:
            if await t.conn.fetchval("DELETE FROM sessions WHERE id = $1 AND ($2::text IS NULL OR user_id = $2) "
                                     "RETURNING id", session_id, user_id):
                t.revoke("s:" + session_id)
                return True
            return False

        return await self._transact(tx)

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
                await _put_failures(t.conn, pair_key, pair.at, pair.until, name_key)
            if rules.max_failures_per_account:
                row = await _locked(t.conn, "login_failures", account_key, "at", now)
                account = account_attempt(list(row["at"]), rules, now, proven)
                await _put_failures(t.conn, account_key, account.at, account.until, name_key)
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
                             merge_from: str | None = None, new_device: Device | None = None,
                             user_agent: str | None = None) -> str:
        """As ``JsonStore.complete_login``. ``last_login_at`` is written without a ``NOTIFY`` (a
        login would otherwise drop every host's cached sessions of the account): a cached copy
        of the account may show the previous one for up to ``CACHE_SECONDS``."""
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
            await t.conn.execute("INSERT INTO sessions (id, user_id, jti, expires_at, created_at, last_used_at, client, "
                                 "user_agent) VALUES ($1, $2, $3, $4, $5, $5, $6, $7)", session_id, user.id,
                                 refresh_jti, expires_at, now, attempt.client.replace("\0", ""),
                                 user_agent.replace("\0", "") if user_agent else None)
            await t.conn.execute("UPDATE users SET last_login_at = $2 WHERE id = $1", user.id, now)
            return session_id

        return await self._transact(tx)

    async def unlock(self, name_key: str, user_id: str) -> None:
        async def tx(t: _Tx) -> None:
            _, account_key = failure_keys(name_key, "")
            await t.conn.execute("DELETE FROM login_failures WHERE name_key = $1 OR key = $2", name_key, account_key)
            await t.conn.execute("UPDATE device_tokens SET at = '{}' WHERE user_id = $1 AND at <> '{}'", user_id)

        await self._transact(tx)

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
            await t.conn.execute("DELETE FROM webauthn_challenges WHERE expires_at < $1", now)
            await t.conn.execute("DELETE FROM mfa_tokens WHERE expires_at < $1", now)

        await self._transact(tx)


async def _put_failures(conn: asyncpg.Connection, key: str, at: list[float], until: float, name_key: str) -> None:
    await conn.execute("UPDATE login_failures SET at = $2, until = $3, name_key = $4 WHERE key = $1",
                       key, at, until, name_key)


def _like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern for names starting with ``prefix``: its ``\\``, ``%`` and ``_`` taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


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


def _placeholders(first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))
