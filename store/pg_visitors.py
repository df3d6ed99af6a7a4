"""``PostgresStore``'s visitors, carts, history, favourites, preferences and the data export in
SQL: a mixin on ``PgBase`` (pg_base.py), with the same semantics as ``json_visitors``. Every write
to an owner's data locks the owner's row first, so a visitor upgraded or purged meanwhile owns
nothing (``UnknownOwner``).
"""

import time
import uuid
from typing import Any

import asyncpg

import metrics
from authentication import ANONYMOUS_PREFIX
from models import MAX_QUANTITY

from .pg_base import ALL, CACHE_SECONDS, USER_COLUMNS, PgBase, _locked, _owner, _Tx, _user
from .records import ChallengeRequired, Personal, RateLimited, UnknownOwner, Visitor, public_profile
from .rules import (
    ACTIVITY_GRANULARITY,
    ALL_CLIENTS,
    MAX_FAVOURITES,
    MAX_HISTORY,
    MAX_PENDING_OWNERS,
    _merge_history,
    client_key,
    typed_history,
)


class PgVisitors(PgBase):
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
            row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
            if row is None:
                return None
            sessions = await conn.fetch(
                "SELECT id, created_at, expires_at FROM sessions WHERE user_id = $1 AND expires_at >= $2 "
                "ORDER BY coalesce(created_at, 0), id", user_id, time.time())
            history = self._history_items(user_id, await _history_row(conn, user_id))
            return {
                "profile": public_profile(_user(row)),
                "cart": await _cart(conn, user_id),
                "history": typed_history(history),
                "favourites": await _favourites(conn, user_id),
                "preferences": await _preferences(conn, user_id),
                "sessions": [dict(s) for s in sessions],
            }

        return await self._transact(tx, isolation="repeatable_read")


# -- statements shared by the methods above ---------------------------------------------------------


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
