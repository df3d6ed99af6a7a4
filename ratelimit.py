"""Request budgets per client address (login and register attempts), cheap enough for every request.

A budget is ``limit`` requests per ``window`` seconds for one address. Checking one must cost no
store write: that is what it protects (a ``fsync`` per guessed login was part of the problem).
So each worker counts in memory and shares its counts through the store about once a second
(``share()``, from the app's lifespan): one transaction adds this worker's new counts to the
shared ones and brings back the totals of every worker. Between two shares a worker may admit a
few requests that another worker has already counted: exact within about a second of traffic,
which is what a brute-force limit needs.

Windows slide, approximated the usual way (as nginx and Cloudflare do): the count of the current
fixed window plus the previous window's, weighted by how much of it still lies inside the
sliding one, rounded up to whole requests (so a burst just before a boundary still counts in
full just after it). That keeps two numbers per address instead of a timestamp per request, and
has no burst of twice the limit at a window boundary.
"""

import math
import time
from dataclasses import dataclass

from store import RateLimited, Store, client_key

__all__ = ["Budget", "RateLimited", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int  # 0: no limit
    window: float  # seconds


RECENT_SECONDS = 5.0  # totals are fetched for keys hit this recently, even without new counts


class _Count:
    __slots__ = ("expires_at", "last_hit", "pending", "shared")

    def __init__(self, expires_at: float) -> None:
        self.shared = 0  # every worker's count, as of the last share (this worker's included)
        self.pending = 0  # this worker's count since then
        self.expires_at = expires_at
        self.last_hit = 0.0


class RateLimiter:
    def __init__(self, store: Store, budgets: dict[str, Budget]) -> None:
        self._store = store
        self._budgets = budgets
        self._counts: dict[str, _Count] = {}

    def _count(self, key: str, expires_at: float) -> _Count:
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = _Count(expires_at)
        return count

    def hit(self, kind: str, client: str) -> None:
        """Count one ``kind`` request from ``client``; ``RateLimited`` (not counted) once over budget."""
        budget = self._budgets[kind]
        if not budget.limit:
            return
        now = time.time()
        index, into = divmod(now, budget.window)
        prefix = f"{kind}:{client_key(client)}:"
        current = self._count(prefix + str(int(index)), (index + 2) * budget.window)  # counts as "previous" too
        previous = self._counts.get(prefix + str(int(index) - 1))
        current.last_hit = now
        used_now = current.shared + current.pending
        used_before = previous.shared + previous.pending if previous is not None else 0
        weight = 1 - into / budget.window
        if used_now + math.ceil(used_before * weight) >= budget.limit:  # whole requests, rounded up
            raise RateLimited(self._retry_after(budget, used_now, used_before, into))
        current.pending += 1

    @staticmethod
    def _retry_after(budget: Budget, used_now: int, used_before: int, into: float) -> float:
        """Seconds until the sliding count falls below the limit, if nothing else arrives."""
        if used_now >= budget.limit:
            return budget.window - into + budget.window * (1 - (budget.limit - 1) / used_now)
        # the previous window's weight must fall to (limit - used_now) / used_before
        return max(1.0, budget.window * (1 - (budget.limit - used_now) / used_before) - into)

    async def share(self) -> None:
        """Add this worker's new counts to the store's and learn every worker's totals for the
        addresses it has seen lately (a worker that counted nothing new still learns the others'
        counts); forget windows that can no longer count."""
        now = time.time()
        for key in [k for k, c in self._counts.items() if c.expires_at < now]:
            del self._counts[key]
        recent = now - RECENT_SECONDS
        sent = {key: c.pending for key, c in self._counts.items() if c.pending or c.last_hit > recent}
        if not sent:
            return
        totals = await self._store.count_requests({k: (n, self._counts[k].expires_at) for k, n in sent.items()})
        for key, total in totals.items():
            count = self._counts.get(key)
            if count is not None:
                count.pending -= sent[key]  # requests counted during the await stay pending
                count.shared = total
