"""The audit log's writer: security events noted in memory by the flows and routes, written by the
store in one batch about once a second (``flush``, run by the app's lifespan, and at a clean stop).

Why batched: an event must not cost a request an ``fsync`` or a round trip; a login already pays
for one transaction. The price is a loss window: a ``kill -9`` (or a crash) loses the events of the
last second or so, as it does the browsing history's views; a clean stop loses none.

Why folded: a flood of wrong passwords against one account from one address must not fill the
disk. The first ``login_failed`` of an (account, address) pair is written at once (next flush);
the ones that follow within ``FOLD_SECONDS`` of it are only counted, and written as one more
``login_failed`` event with ``detail.count`` (how many it stands for) when that minute is over or
the worker stops. So a pair costs at most two events a minute per worker, and the counts add up
to the number of failures. The refusals a flood causes (``locked``, ``challenge_required``: no
password is even checked) fold the same way, each type on its own. At most ``MAX_FOLDS`` pairs
are open at once; past it the oldest is written early.

Events carry who (``user_id``, ``username``), from where (``client``: the address as the service
counts it, ``user_agent``: truncated) and ``detail`` (small, type-specific, with the request's
``request_id``). Never a password, a hash or a token: the flows pass only names and ids.
"""

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import logs
from store import AuditEvent, Store, User

log = logging.getLogger("uvicorn.error")
FOLD_SECONDS = 60.0
MAX_FOLDS = 10_000
MAX_PENDING = 100_000  # events waiting for a store that does not answer; past it the oldest go
USER_AGENT_CHARS = 200
FOLDED = frozenset({"login_failed", "locked", "challenge_required"})  # what a flood repeats
TYPES = ("register", "login", "login_failed", "locked", "challenge_required", "logout", "logout_all",
         "session_ended", "refresh_reuse", "password_changed", "account_deleted", "admin_disable", "admin_enable",
         "admin_unlock", "admin_end_sessions", "admin_grant", "admin_revoke", "passkey_added", "passkey_removed",
         "totp_enabled", "totp_disabled")


def event_id(at: float) -> str:
    """Sorts by time (microseconds, 16 hex digits), then 8 random hex digits: unique, and the
    paging cursor on both backends."""
    return f"{int(at * 1_000_000):016x}{secrets.token_hex(4)}"


@dataclass(slots=True)
class _Fold:
    first: AuditEvent
    started: float
    count: int = 0  # failures after the first, not yet written
    last_at: float = 0.0
    request_id: str | None = None


class Auditor:
    """One per worker (app.state.audit); ``record`` is synchronous and cheap (a list append)."""

    def __init__(self, store: Store, fold_seconds: float = FOLD_SECONDS, enabled: bool = True) -> None:
        self._store = store
        self._enabled = enabled
        self._fold_seconds = fold_seconds
        self._pending: list[AuditEvent] = []
        self._folds: dict[tuple[str, str, str], _Fold] = {}  # (type, account id, address) -> the open minute

    def record(self, type: str, user: User | None, client: str | None = None, user_agent: str | None = None,
               *, user_id: str | None = None, **detail: Any) -> None:
        """Note an event about ``user`` (or just ``user_id``, once the account is gone)."""
        if type not in TYPES:
            raise ValueError(f"not an audit event type: {type!r}")
        if not self._enabled:  # AUDIT_ENABLED=false: the bench's baseline
            return
        now = time.time()
        request_id = logs.current_request_id()
        if request_id:
            detail["request_id"] = request_id
        event = AuditEvent(event_id(now), now, type, user.id if user else user_id, user.username if user else None,
                           client, user_agent[:USER_AGENT_CHARS] if user_agent else None, detail)
        if type in FOLDED and event.user_id and client is not None:
            key = (type, event.user_id, client)
            fold = self._folds.get(key)
            if fold is not None and now - fold.started < self._fold_seconds:
                fold.count += 1
                fold.last_at, fold.request_id = now, request_id
                return
            if fold is not None:
                self._close(key)
            if len(self._folds) >= MAX_FOLDS:
                self._close(next(iter(self._folds)))
            self._folds[key] = _Fold(event, now)
            event.detail["count"] = 1
        self._pending.append(event)

    def _close(self, key: tuple[str, str, str]) -> None:
        fold = self._folds.pop(key)
        if fold.count:
            first = fold.first
            detail = {**first.detail, "count": fold.count, "first_at": fold.started, "folded": True}
            if fold.request_id:
                detail["request_id"] = fold.request_id
            else:
                detail.pop("request_id", None)
            self._pending.append(AuditEvent(event_id(fold.last_at), fold.last_at, first.type, first.user_id,
                                            first.username, first.client, first.user_agent, detail))

    async def flush(self, everything: bool = False) -> int:
        """Write what is noted (and the folds whose minute is over; ``everything``: all of them,
        at a stop) in one batch; on failure the events stay for the next round."""
        now = time.time()
        for key in [k for k, f in self._folds.items() if everything or now - f.started >= self._fold_seconds]:
            self._close(key)
        if not self._pending:
            return 0
        events, self._pending = self._pending, []
        try:
            await self._store.record_audit(events)
        except BaseException:
            self._pending = events[-MAX_PENDING:] + self._pending
            raise
        return len(events)
