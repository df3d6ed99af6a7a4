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
- **One client cannot starve the others.** Waiting requests are ordered by start-time fair
  queueing over client addresses: each job is tagged, on arrival, with the later of the tag of the
  job started last and the tag after its own address's previous job, and the lowest tag goes next.
  An address that arrives while another floods is served as soon as the running hash ends, not
  after one more of the flood's (which a plain round-robin over addresses does, costing the real
  user up to three hashes instead of two). A flood from many addresses shares the same bound as
  everyone else.

Everything here runs on the event loop (no locks): the counters change only between awaits.
"""

import asyncio
import heapq
import itertools
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
        # Start-time fair queueing: a job's tag is max(virtual time, its client's next tag); the
        # virtual time is the tag of the job granted last. Lowest tag first, ties in arrival order.
        self._virtual = 0
        self._next_tag: dict[str, int] = {}  # per client: the tag after its last job
        self._queue: list[tuple[int, int, str, asyncio.Future[None]]] = []  # heap: (tag, seq, client, turn)
        self._seq = itertools.count()
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}  # per client, in tag order

    def _tag(self, client: str) -> int:
        return max(self._virtual, self._next_tag.get(client, 0))

    def expected_wait(self, client: str) -> float:
        """Seconds a new job from ``client`` would wait for a slot: the jobs tagged before it."""
        if self._free:
            return 0.0
        tag = self._tag(client)
        ahead = sum(1 for queue in self._waiting.values() for waiting, _ in queue if waiting <= tag)
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
        tag = self._tag(client)
        self._next_tag[client] = tag + 1
        try:
            if self._free:
                self._free -= 1
                self._virtual = tag
                granted = True
                if watcher is not None:
                    try:
                        await asyncio.sleep(0)  # one step: a client already gone is seen now
                    except BaseException:
                        self._release()
                        raise
            else:
                granted = await self._wait_turn(client, tag, watcher)
            if watcher is not None and watcher.done():
                if granted:
                    self._release()  # the turn came as the client left: pass it on
                raise ClientGone
        finally:
            if watcher is not None:
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: a failing receive() means gone, nothing to log

    async def _wait_turn(self, client: str, tag: int, watcher: "asyncio.Future[Any] | None") -> bool:
        """Queue for a slot until it is handed over (True) or the client goes (False)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append((tag, turn))
        heapq.heappush(self._queue, (tag, next(self._seq), client, turn))
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
        """Drop ``turn`` from its client's count; its heap entry, now done, is skipped later."""
        queue = self._waiting.get(client)
        if queue is not None:
            for entry in queue:
                if entry[1] is turn:
                    queue.remove(entry)
                    break
            if not queue:
                del self._waiting[client]

    def _release(self) -> None:
        """Hand the slot to the waiting job with the lowest tag, or free it."""
        while self._queue:
            tag, _, client, turn = heapq.heappop(self._queue)
            if turn.done():  # its client left: already forgotten
                continue
            self._forget(client, turn)
            self._virtual = tag
            turn.set_result(None)
            return
        self._free += 1
        self._next_tag.clear()  # nobody waits: every client starts level again


class EarlyRetries:
    """Refusals answered no sooner than the ``Retry-After`` the client was last given.

    A refusal (429, 503) is cheap, but not free: a client that ignores ``Retry-After`` and asks
    again at once can keep the event loop busy answering it, and the hashing threads run at a
    lower priority than the loop (``authentication.HASH_NICENESS``). Measured on one core: four
    such connections made ~2,000 refusals a second, a hash then took 2.7 s instead of 0.3 s, so
    the gate's estimate stayed high and went on refusing nearly everyone, long after the load that
    raised it had gone. So an address that asks again before its ``Retry-After`` has passed waits
    for its answer until then, at most ``max_delay`` seconds: a parked request costs a timer, not
    CPU. The first refusal, and any request of a client that honours ``Retry-After``, is answered
    at once. The addresses remembered are bounded (the oldest are forgotten first).
    """

    def __init__(self, max_delay: float, capacity: int = 100_000) -> None:
        """``max_delay`` 0 disables the delay."""
        self.max_delay = max_delay
        self._capacity = capacity
        self._due: dict[str, float] = {}  # address -> monotonic time its Retry-After ends; oldest first

    async def refuse(self, client: str, retry_after: float) -> None:
        """Call before answering ``client`` a refusal with ``retry_after`` seconds."""
        if not self.max_delay:
            return
        now = time.monotonic()
        due = self._due.get(client, 0.0)
        if due > now:  # several early requests of one address all wait for the same time
            await asyncio.sleep(min(due - now, self.max_delay))
            now = time.monotonic()
        self._due.pop(client, None)  # re-inserted: the dict stays in order of last refusal
        self._due[client] = now + retry_after
        if len(self._due) > self._capacity:
            del self._due[next(iter(self._due))]
