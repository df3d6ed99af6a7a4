"""The rules both backends apply, as plain functions of what they read: the lockout's arithmetic
(per (name, address), per name, per device token), history merges and limits, and the keys and
digests the store keeps instead of names and addresses. A backend reads its rows, calls these,
and writes what they return, so the JSON file and PostgreSQL cannot drift apart.
"""

import hashlib
from typing import Any

from .records import USER_FIELDS, ChallengeRequired, Failures, Lockout, RateLimited

ALL_CLIENTS = "*"  # the anonymous_logins key of the service-wide bound
ACTIVITY_GRANULARITY = 60.0  # seconds: record an anonymous visitor's activity at most this often
MAX_HISTORY = 50  # distinct items per owner; an older view drops off the end
MAX_FAVOURITES = 1000  # a backstop: the routes only accept catalogue items
MAX_PENDING_OWNERS = 10_000  # unflushed views of this many owners: flush now rather than grow
UPGRADE_MEMORY = 3600.0  # seconds: how long a visitor carried into an account is remembered (see flush_views)



def client_key(client: str) -> str:
    """What the store keeps of a client address: a digest (no addresses in the files)."""
    return hashlib.sha256(client.encode()).hexdigest()[:32]



def failure_keys(name_key: str, client: str) -> tuple[str, str]:
    """The ``login_failures`` keys of a (username, address) pair and of the account; ``name_key``
    is already a keyed digest of the name (trust.py), so no typed name is ever kept."""
    return "pair:" + client_key(name_key + "\0" + client), "account:" + name_key



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


FIXED_FIELDS = frozenset({"id", "username"})  # set at registration: the keys of the name's indexes


def changeable_fields(changes: dict[str, Any]) -> list[str]:
    """The names of ``changes`` (``update_user``), each an attribute of the account that may change."""
    bad = set(changes) - set(USER_FIELDS) | set(changes) & FIXED_FIELDS
    if bad or not changes:
        raise ValueError(f"not attributes an update may set: {sorted(bad) or 'none given'}")
    return list(changes)
