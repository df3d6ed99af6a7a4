"""``JsonStore``'s visitors and what any owner keeps (cart, history, favourites, preferences), and
the data export: a mixin of ``JsonStore`` (json_store.py), on the same tables.

The one exception to "every change is a transaction" is a view of an item: it is worth less than
a write, so ``record_view`` only notes it in this worker's memory and ``flush_views`` (called at
most once a second by the app, and at a clean stop) writes every noted view in one transaction.
A ``kill -9`` can lose the views of the last second or so; never a favourite, preference, cart
line or account. This worker's own unflushed views are part of what it reads (``get_history``)
and of what a register or login carries into the account; another worker sees them once they are
flushed, and views another worker noted for a visitor who has since registered or logged in
follow it into the account (the ``upgraded`` table remembers, for an hour, which account each
visitor went into; nothing else).
"""

import time
import uuid
from typing import Any

from authentication import ANONYMOUS_PREFIX
from journal import Change
from models import MAX_QUANTITY

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

PERSONAL_TABLES = ("carts", "history", "favourites", "preferences")  # rows keyed by owner, gone with it


class JsonVisitors:
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
            "profile": public_profile(user),
            "cart": await self.get_cart(user_id),
            "history": await self.get_history(user_id),
            "favourites": await self.get_favourites(user_id),
            "preferences": await self.get_preferences(user_id),
            "sessions": sorted(sessions, key=lambda s: s["created_at"] or 0.0),
        }
