"""The hashing gate's order and bound, on a real thread pool with jobs that block until released.

The HTTP tests (test_abuse, test_flood) show the gate's effect end to end; these pin the order in
which waiting jobs get the slot, which timing through sockets cannot show reliably.
"""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from admission import TRUSTED, ClientGone, HashGate, Overloaded


class Jobs:
    """Jobs that record when they start and run until ``finish_one`` lets the oldest end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._ends: dict[str, threading.Event] = {}

    def job(self, name: str) -> str:
        self.started.append(name)
        self._ends.setdefault(name, threading.Event()).wait(10)
        return name

    async def finish(self, name: str) -> None:
        self._ends.setdefault(name, threading.Event()).set()

    async def until_started(self, count: int) -> None:
        for _ in range(1000):
            if len(self.started) >= count:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"only {self.started} started")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _gate(pool: ThreadPoolExecutor, max_wait: float = 0, seconds_per_job: float = 1.0) -> HashGate:
    return HashGate(pool, slots=1, seconds_per_job=seconds_per_job, max_wait=max_wait)


async def _run_in_order(arrivals: list[tuple[str, str]]) -> list[str]:
    """Start the jobs (client, name) in this order, one slot, then let each end in turn."""
    jobs = Jobs()
    with ThreadPoolExecutor(1) as pool:
        gate = _gate(pool)
        tasks = []
        for client, name in arrivals:
            tasks.append(asyncio.ensure_future(gate.run(client, None, jobs.job, name)))
            await _settle()
        for n in range(1, len(arrivals) + 1):
            await jobs.until_started(n)
            await jobs.finish(jobs.started[-1])
        assert sorted(await asyncio.gather(*tasks)) == sorted(name for _, name in arrivals)
    return jobs.started


def test_an_address_arriving_during_a_flood_goes_next() -> None:
    """A flood has one job running and two waiting; a real user arriving now is served as soon as
    the running job ends, not after another of the flood's (plain round-robin over addresses
    serves flood-2 first)."""
    order = asyncio.run(_run_in_order([
        ("flood", "flood-1"), ("flood", "flood-2"), ("flood", "flood-3"), ("user", "user-1")]))
    assert order == ["flood-1", "user-1", "flood-2", "flood-3"]


def test_backlogged_addresses_alternate() -> None:
    """Two addresses with queued jobs take turns, whatever order their jobs arrived in."""
    order = asyncio.run(_run_in_order([
        ("a", "a-1"), ("a", "a-2"), ("a", "a-3"), ("b", "b-1"), ("b", "b-2"), ("b", "b-3")]))
    assert order == ["a-1", "b-1", "a-2", "b-2", "a-3", "b-3"]


def test_new_addresses_cannot_overtake_a_waiting_job_for_ever() -> None:
    """b's second job waits while new addresses keep coming (each tagged at the virtual time, so
    before it): it is passed over once (one slot), then served."""
    order = asyncio.run(_run_in_order([
        ("b", "b-1"), ("b", "b-2"), ("c1", "c1"), ("c2", "c2"), ("c3", "c3"), ("c4", "c4")]))
    assert order == ["b-1", "c1", "b-2", "c2", "c3", "c4"]


def test_a_job_whose_client_left_gives_its_place_back() -> None:
    """x queued and left: x's next job is not pushed behind y's, which arrived after it."""
    async def scenario() -> list[str]:
        jobs = Jobs()
        gone = asyncio.Event()
        with ThreadPoolExecutor(1) as pool:
            gate = _gate(pool)
            first = asyncio.ensure_future(gate.run("a", None, jobs.job, "a-1"))
            await jobs.until_started(1)
            left = asyncio.ensure_future(gate.run("x", gone.wait, jobs.job, "x-left"))
            await _settle()
            gone.set()
            await _settle()
            assert isinstance(left.exception(), ClientGone)
            tasks = [asyncio.ensure_future(gate.run("x", None, jobs.job, "x-2"))]
            await _settle()
            tasks.append(asyncio.ensure_future(gate.run("y", None, jobs.job, "y-1")))
            await _settle()
            for n in range(1, 4):
                await jobs.until_started(n)
                await jobs.finish(jobs.started[-1])
            await asyncio.gather(first, *tasks)
        return jobs.started

    assert asyncio.run(scenario()) == ["a-1", "x-2", "y-1"]


def test_a_waiter_whose_client_leaves_is_never_run() -> None:
    async def scenario() -> tuple[list[str], BaseException | None]:
        jobs = Jobs()
        gone = asyncio.Event()
        with ThreadPoolExecutor(1) as pool:
            gate = _gate(pool)
            first = asyncio.ensure_future(gate.run("a", None, jobs.job, "running"))
            await jobs.until_started(1)
            left = asyncio.ensure_future(gate.run("b", gone.wait, jobs.job, "abandoned"))
            stays = asyncio.ensure_future(gate.run("c", None, jobs.job, "stays"))
            await _settle()
            gone.set()
            await _settle()
            error = left.exception() if left.done() else None
            await jobs.finish("running")
            await jobs.until_started(2)
            await jobs.finish("stays")
            await asyncio.gather(first, stays)
        return jobs.started, error

    started, error = asyncio.run(scenario())
    assert isinstance(error, ClientGone)
    assert started == ["running", "stays"]


def test_the_bound_counts_only_the_jobs_tagged_before_the_caller() -> None:
    """With 1 s per job and a 2.5 s bound: the flooding address is refused once two of its jobs
    wait, while a new address is still admitted (only the running job is ahead of it)."""
    async def scenario() -> tuple[float, float]:
        jobs = Jobs()
        with ThreadPoolExecutor(1) as pool:
            gate = _gate(pool, max_wait=2.5)
            tasks = [asyncio.ensure_future(gate.run("flood", None, jobs.job, f"f{i}")) for i in range(3)]
            await _settle()
            await jobs.until_started(1)
            with pytest.raises(Overloaded) as refused:
                gate.admit("flood")
            assert refused.value.retry_after == 1  # 3 s expected, 0.5 s over the bound, rounded up
            gate.admit("user")  # does not raise
            flood_wait, user_wait = gate.expected_wait("flood"), gate.expected_wait("user")
            for n in range(1, 4):
                await jobs.until_started(n)
                await jobs.finish(jobs.started[-1])
            await asyncio.gather(*tasks)
        return flood_wait, user_wait

    flood_wait, user_wait = asyncio.run(scenario())
    assert flood_wait == pytest.approx(3.0)
    assert user_wait == pytest.approx(1.0)


def test_a_trusted_job_runs_in_its_lane_while_every_slot_is_taken() -> None:
    """The slot busy with a stranger's job and a stranger waiting: a trusted job starts at once in
    the lane (it does not wait for the running job), a second trusted job waits until the lane is
    free and then goes before the waiting stranger; without a lane, trusted jobs wait for the slot."""
    async def scenario(with_lane: bool) -> list[str]:
        jobs = Jobs()
        with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(1) as lane:
            gate = HashGate(pool, slots=1, seconds_per_job=1.0, lane=lane if with_lane else None)
            tasks = [asyncio.ensure_future(gate.run("flood", None, jobs.job, "f1"))]
            await jobs.until_started(1)
            tasks.append(asyncio.ensure_future(gate.run("flood", None, jobs.job, "f2")))
            await _settle()
            assert gate.expected_wait("owner", TRUSTED) == (0.0 if with_lane else 1.0)
            tasks.append(asyncio.ensure_future(gate.run("owner", None, jobs.job, "t1", priority=TRUSTED)))
            await _settle()
            tasks.append(asyncio.ensure_future(gate.run("owner2", None, jobs.job, "t2", priority=TRUSTED)))
            await _settle()
            if with_lane:
                await jobs.until_started(2)  # t1, beside f1
            assert jobs.started == (["f1", "t1"] if with_lane else ["f1"])
            for name in ("t1", "f1", "t2", "f2"):
                await jobs.finish(name)
            assert sorted(await asyncio.gather(*tasks)) == ["f1", "f2", "t1", "t2"]
        return jobs.started

    assert asyncio.run(scenario(with_lane=True)) == ["f1", "t1", "t2", "f2"]
    assert asyncio.run(scenario(with_lane=False)) == ["f1", "t1", "t2", "f2"]
