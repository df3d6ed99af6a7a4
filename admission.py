"""Admission control for password hashing: a bounded, fair queue in front of the bcrypt threads.

A hash costs ~0.27 s of a core at cost 12 and the machine has a few cores, so hashing is the
resource a login flood exhausts. Without a gate every request is hashed in arrival order, however
long it waited and whether or not its client is still there: 60 abandoned logins made the next
real one wait 11 s. The gate fixes the three ways that goes wrong:

- **Bounded wait.** Before a request joins the queue, its expected wait is estimated from the
  jobs that would run before it and the measured time of a hash (a moving average, so it follows
  the machine's real speed, contention included). Over ``max_wait`` it is refused at once
  (``Overloaded``, a 503 with ``Retry-After``) instead of joining a queue it would time out in.
- **Abandoned requests cost nothing.** A waiting request watches its connection; when the client
  goes, it leaves the queue at once (``ClientGone``), so it neither runs a hash nor counts in
  anyone's estimate. A request whose client left before it was queued is never queued.
- **One client cannot starve the others.** Waiting requests queue per client address and slots
  are handed round-robin over the addresses, so a flood from one address waits behind its own
  requests while a real user from another address waits for at most about one hash per address
  ahead of it. A flood from many addresses shares the same bound as everyone else.

Everything here runs on the event loop (no locks): the counters change only between awaits.
"""

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")
Watch = Callable[[], Awaitable[Any]]  # returns once the client has gone
_SMOOTHING = 0.2  # weight of the newest hash time in the moving average


class Overloaded(Exception):
    """The expected wait is over the bound; ``retry_after`` is in whole seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))


class ClientGone(Exception):
    """The client disconnected before its turn came: nothing was hashed."""


class HashGate:
    def __init__(self, executor: Executor, slots: int, seconds_per_job: float, max_wait: float = 0) -> None:
        """``slots`` jobs run at once in ``executor``; ``max_wait`` 0 disables the bound."""
        self._executor = executor
        self._slots = slots
        self._free = slots
        self.max_wait = max_wait
        self.seconds_per_job = seconds_per_job
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # per client, in round-robin order

    def expected_wait(self, client: str) -> float:
        """Seconds a new job from ``client`` would wait for a slot, under round-robin service."""
        if self._free:
            return 0.0
        mine = len(self._waiting.get(client, ()))
        ahead = mine + sum(min(len(q), mine + 1) for key, q in self._waiting.items() if key != client)
        return (ahead // self._slots + 1) * self.seconds_per_job  # +1: the jobs running now

    def admit(self, client: str) -> None:
        """Raise ``Overloaded`` if a job from ``client`` would now wait longer than ``max_wait``:
        callers check before work that should not be done for a refused request."""
        if self.max_wait and (wait := self.expected_wait(client)) > self.max_wait:
            raise Overloaded(wait - self.max_wait)

    async def run(self, client: str, watch: Watch | None, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the executor once a slot is free; see the module docstring."""
        self.admit(client)
        await self._acquire(client, watch)
        try:
            started = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            took = time.perf_counter() - started
            self.seconds_per_job += _SMOOTHING * (took - self.seconds_per_job)
            return result
        finally:
            self._release()

    async def _acquire(self, client: str, watch: Watch | None) -> None:
        watcher = asyncio.ensure_future(watch()) if watch is not None else None
        try:
            if self._free:
                self._free -= 1
                granted = True
                if watcher is not None:
                    try:
                        await asyncio.sleep(0)  # one step: a client already gone is seen now
                    except BaseException:
                        self._release()
                        raise
            else:
                granted = await self._wait_turn(client, watcher)
            if watcher is not None and watcher.done():
                if granted:
                    self._release()  # the turn came as the client left: pass it on
                raise ClientGone
        finally:
            if watcher is not None:
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: a failing receive() means gone, nothing to log

    async def _wait_turn(self, client: str, watcher: "asyncio.Future[Any] | None") -> bool:
        """Queue for a slot until it is handed over (True) or the client goes (False)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(turn)
        try:
            await asyncio.wait({turn} if watcher is None else {turn, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: give back a slot handed over meanwhile
            if turn.done():
                self._release()
            else:
                turn.cancel()
                self._forget(client, turn)
            raise
        if turn.done():
            return True
        turn.cancel()
        self._forget(client, turn)
        return False

    def _forget(self, client: str, turn: asyncio.Future[None]) -> None:
        queue = self._waiting.get(client)
        if queue is not None:
            try:
                queue.remove(turn)
            except ValueError:
                pass
            if not queue:
                del self._waiting[client]

    def _release(self) -> None:
        """Hand the slot to the first waiter of the next client in turn, or free it."""
        while self._waiting:
            client = next(iter(self._waiting))
            queue = self._waiting.pop(client)
            turn = queue.popleft()
            if queue:
                self._waiting[client] = queue  # to the back of the round
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1
