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
  user up to three hashes instead of two). Tags alone would let a stream of new addresses overtake
  a waiting job for ever, so the oldest waiting job is passed over at most once per slot. A job
  whose client left gives its tag back.
- **Who goes first under a flood.** Fair queueing per address cannot protect a real user from an
  attacker with many addresses. So jobs come in three classes (``TRUSTED``: a login from a device
  the account used before, or a re-authentication by a signed-in user; ``SOLVED``: a login that
  carries a solved proof-of-work challenge; ``OTHER``) and an earlier class always goes first.
  The bound is computed per class, so when the queue is long it is the unproven attempts that
  are refused, with a hint that solving a challenge would get them in (trust.py).
- **A trusted login does not wait for a stranger's hash.** Going first still means waiting for
  the hashes already running (a bcrypt hash cannot be stopped), which doubled a trusted login's
  time under a flood on one core (bench row 11b: 2.2× idle). So a trusted job that finds every
  slot taken runs at once in its own lane: one more thread, at the event loop's priority where
  the pool's run below it (``authentication.HASH_NICENESS``), so it takes the core from the
  flood's hash rather than sharing it. One lane job at a time: it can take at most half a core
  from the loop, and only for someone holding a device token of the account or a session.

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


TRUSTED, SOLVED, OTHER = 0, 1, 2  # priority classes: a device the owner used before, a solved challenge, the rest


class _Job:
    """A waiting request: its class, fair-queueing tag, arrival number and the future that grants it."""

    __slots__ = ("client", "priority", "seq", "tag", "turn")

    def __init__(self, priority: int, tag: int, seq: int, client: str, turn: "asyncio.Future[None]") -> None:
        self.priority, self.tag, self.seq, self.client, self.turn = priority, tag, seq, client, turn


class HashGate:
    def __init__(self, executor: Executor, slots: int, seconds_per_job: float, max_wait: float = 0,
                 lane: Executor | None = None) -> None:
        """``slots`` jobs run at once in ``executor``; ``max_wait`` 0 disables the bound;
        ``lane``: the executor of the trusted jobs' own lane (one job at a time), or none."""
        self._executor = executor
        self._slots = slots
        self._free = slots
        self._lane = lane
        self._lane_free = lane is not None
        self.max_wait = max_wait
        self.seconds_per_job = seconds_per_job
        # Start-time fair queueing within a class: a job's tag is max(virtual time, its client's
        # next tag); the virtual time is the tag of the job granted last. Lower class first, then
        # lowest tag, ties in arrival order.
        self._virtual = 0
        self._next_tag: dict[str, int] = {}  # per client: the tag after its last job
        self._seq = itertools.count()
        self._queue: list[tuple[int, int, int, _Job]] = []  # heap by (class, tag, seq); granted or gone ones skipped
        self._arrivals: tuple[deque[_Job], ...] = (deque(), deque(), deque())  # per class, in arrival order
        self._live = 0  # jobs waiting
        self._oldest: _Job | None = None
        self._overtaken = 0  # how often the oldest waiting job of the first class has been passed over

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot now (``metrics.auth_hash_queue_depth``)."""
        return self._live

    def _tag(self, client: str) -> int:
        return max(self._virtual, self._next_tag.get(client, 0))

    def expected_wait(self, client: str, priority: int = OTHER) -> float:
        """Seconds a new job of class ``priority`` from ``client`` would wait for a slot: the
        jobs of earlier classes, and those of its own class tagged before it."""
        if self._free or (priority == TRUSTED and self._lane_free):
            return 0.0
        tag = self._tag(client)
        ahead = sum(1 for p in range(priority + 1) for job in self._arrivals[p]
                    if (p < priority or job.tag <= tag) and not job.turn.done())
        return (ahead // self._slots + 1) * self.seconds_per_job  # +1: the jobs running now

    def admit(self, client: str, priority: int = OTHER) -> None:
        """Raise ``Overloaded`` if a job from ``client`` would now wait longer than ``max_wait``:
        callers check before work that should not be done for a refused request. Trusted and
        solved jobs go before the rest, so under a flood the rest are the ones shed."""
        if self.max_wait and (wait := self.expected_wait(client, priority)) > self.max_wait:
            raise Overloaded(wait - self.max_wait)

    async def run(self, client: str, watch: Watch | None, fn: Callable[..., T], *args: Any,
                  priority: int = OTHER) -> T:
        """Run ``fn(*args)`` in the executor once a slot is free; see the module docstring."""
        self.admit(client, priority)
        if priority == TRUSTED and self._lane_free and not self._free:
            return await self._in_lane(watch, fn, *args)
        await self._acquire(client, watch, priority)
        try:
            started = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            took = time.perf_counter() - started
            self.seconds_per_job += _SMOOTHING * (took - self.seconds_per_job)
            return result
        finally:
            self._release()

    async def _in_lane(self, watch: Watch | None, fn: Callable[..., T], *args: Any) -> T:
        """Run a trusted job in the lane now (every slot is taken); its time is not the pool's."""
        assert self._lane is not None
        self._lane_free = False
        try:
            if watch is not None:  # one step: a client already gone is seen now
                watcher = asyncio.ensure_future(watch())
                try:
                    await asyncio.sleep(0)
                finally:
                    watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: a failing receive() means gone, nothing to log
                    raise ClientGone
            return await asyncio.get_running_loop().run_in_executor(self._lane, fn, *args)
        finally:
            self._lane_free = True

    async def _acquire(self, client: str, watch: Watch | None, priority: int) -> None:
        watcher = asyncio.ensure_future(watch()) if watch is not None else None
        tag = self._tag(client)
        self._next_tag[client] = tag + 1
        if len(self._next_tag) > 4 * (self._live + self._slots) + 1024:
            # a tag at or below the virtual time changes nothing (max()): forget those
            self._next_tag = {c: t for c, t in self._next_tag.items() if t > self._virtual}
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
                granted = await self._wait_turn(client, priority, tag, watcher)
            if watcher is not None and watcher.done():
                if granted:
                    self._release()  # the turn came as the client left: pass it on
                raise ClientGone
        finally:
            if watcher is not None:
                watcher.cancel()
                if watcher.done() and not watcher.cancelled():
                    watcher.exception()  # retrieved: a failing receive() means gone, nothing to log

    async def _wait_turn(self, client: str, priority: int, tag: int, watcher: "asyncio.Future[Any] | None") -> bool:
        """Queue for a slot until it is handed over (True) or the client goes (False)."""
        job = _Job(priority, tag, next(self._seq), client, asyncio.get_running_loop().create_future())
        heapq.heappush(self._queue, (priority, tag, job.seq, job))
        self._arrivals[priority].append(job)
        self._live += 1
        try:
            await asyncio.wait({job.turn} if watcher is None else {job.turn, watcher},
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: give back a slot handed over meanwhile
            if job.turn.done():
                self._release()
            else:
                self._abandon(job)
            raise
        if job.turn.done():
            return True
        self._abandon(job)
        return False

    def _abandon(self, job: _Job) -> None:
        """``job`` leaves without a hash: it stops counting, and its client's tag is given back."""
        job.turn.cancel()
        self._live -= 1
        if self._next_tag.get(job.client) == job.tag + 1:
            self._next_tag[job.client] = job.tag
        if len(self._queue) > 2 * self._live + 64:  # mostly left-behind entries: rebuild
            self._arrivals = tuple(deque(j for j in jobs if not j.turn.done()) for jobs in self._arrivals)
            self._queue = [(j.priority, j.tag, j.seq, j) for jobs in self._arrivals for j in jobs]
            heapq.heapify(self._queue)

    def _release(self) -> None:
        """Hand the slot to the waiting job of the first class with the lowest tag, or free it.
        Fairness by tags alone would let a stream of newly arriving addresses overtake a waiting
        job for ever (each comes in at the virtual time); so the oldest waiting job of that class
        is passed over at most ``slots`` times, about one hash, and then goes next. A later class
        waits for the earlier ones: that is what the classes are for."""
        for jobs in self._arrivals:
            while jobs and jobs[0].turn.done():
                jobs.popleft()
        first = next((jobs for jobs in self._arrivals if jobs), None)
        if first is None:
            self._queue.clear()  # only left-behind entries
            self._free += 1
            self._next_tag.clear()  # nobody waits: every client starts level again
            return
        oldest = first[0]
        if oldest is not self._oldest:
            self._oldest, self._overtaken = oldest, 0
        if self._overtaken >= self._slots:
            job = oldest
        else:
            while (job := heapq.heappop(self._queue)[3]).turn.done():
                pass
        if job is not oldest:
            self._overtaken += 1
        self._live -= 1
        self._virtual = max(self._virtual, job.tag)
        job.turn.set_result(None)


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
        """Call before answering ``client`` (an address, or an address and a kind of refusal) a
        refusal with ``retry_after`` seconds."""
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
