"""The service as it runs in production: real uvicorn processes, several workers, signals, crashes.

The in-process tests (httpx over ASGI) cannot show what only separate processes can: workers that
each keep the store in memory and must agree through the files, a ``kill -9`` between a write and
its acknowledgement, a clean stop that folds the journal into ``users.json``, a process that must
refuse to start. Every request goes over loopback TCP; calls meant to reach every worker open a
fresh connection each (uvicorn's workers share one listening socket and the kernel spreads the
accepts), and the access log (each line tagged with the worker's pid) proves that they did.
"""

import asyncio
import json
import random
import signal
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import bcrypt
import httpx
import pytest

from conftest import assert_account, bearer
from models import encode_cursor
from server import Server

PASSWORD = "password123"
TAKEN = {"detail": "Username already taken"}


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "users.json"


def credentials(username: str, password: str = PASSWORD) -> dict[str, str]:
    return {"username": username, "password": password}


@contextmanager
def fresh_connections(server: Server) -> Iterator[httpx.Client]:
    """A client that opens a new TCP connection for every request, so each may reach another worker."""
    with httpx.Client(base_url=server.url, timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        yield client


def login(server: Server, username: str, password: str = PASSWORD) -> dict[str, Any]:
    with fresh_connections(server) as client:
        response = client.post("/users/login", json=credentials(username, password))
    assert response.status_code == 200, response.text
    return response.json()


def register(server: Server, username: str, password: str = PASSWORD) -> None:
    with fresh_connections(server) as client:
        response = client.post("/users/register", json=credentials(username, password))
    assert response.status_code == 201, response.text


def on_every_worker(server: Server, method: str, path: str, expected: int, *, min_calls: int = 20,
                    max_calls: int = 300, **request: Any) -> list[httpx.Response]:
    """Call ``method path`` on fresh connections, each answer must be ``expected``, until every
    worker has answered at least once (and at least ``min_calls`` times in all)."""
    request_line = f"{method} {path}"
    workers = server.worker_pids()
    assert len(workers) == server.workers, f"expected {server.workers} workers, saw {workers}:\n{server.stderr}"
    before = server.served_by(request_line)
    responses: list[httpx.Response] = []
    with fresh_connections(server) as client:
        while len(responses) < max_calls:
            response = client.request(method, path, **request)
            assert response.status_code == expected, f"call {len(responses) + 1}: {response.status_code} {response.text}"
            responses.append(response)
            if len(responses) >= min_calls and set(server.served_by(request_line) - before) >= workers:
                break
    served = server.served_by(request_line) - before
    assert set(served) == workers, f"{len(responses)} calls reached only workers {dict(served)} of {workers}"
    return responses


def read_json(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_bytes())
    assert isinstance(doc, dict), doc
    return doc


def journal_of(store: Path) -> Path:
    return store.with_name(store.name + ".journal")


def usernames_in(store: Path) -> list[str]:
    return [user["username"] for user in read_json(store)["users"]]


def parse_journal(store: Path) -> list[list[Any]]:
    """The changes in a journal's complete lines, one line per transaction (a torn last line,
    cut by a crash, is allowed)."""
    journal = journal_of(store)
    if not journal.exists():
        return []
    *complete, _torn_tail = journal.read_bytes().split(b"\n")
    changes = [change for line in complete for change in json.loads(line)]
    assert all(isinstance(c, list) and len(c) == 3 for c in changes), changes
    return changes


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def assert_clean_stop(server: Server) -> None:
    """SIGTERM: every worker runs its shutdown (which folds the journal) and the process exits."""
    assert server.stop() in (0, -signal.SIGTERM), server.stderr
    assert server.stderr.count("Application shutdown complete") == len(server.worker_pids()), server.stderr
    journal = journal_of(server.users_file)
    assert not journal.exists(), f"{journal} left after a clean stop: {journal.read_bytes()[:300]!r}"


async def all_log_in(url: str, usernames: list[str], parallel: int = 32) -> dict[str, int]:
    """Log every user in (``parallel`` at a time); the status per username."""
    limit = asyncio.Semaphore(parallel)
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def one(name: str) -> tuple[str, int]:
            async with limit:
                response = await client.post("/users/login", json=credentials(name))
                return name, response.status_code

        return dict(await asyncio.gather(*(one(name) for name in usernames)))


class RegistrationStream:
    """Threads registering new users back to back on fresh connections; ``acknowledged`` holds each
    username answered 201, ``broken`` counts requests cut off mid-flight (not refused connections)."""

    def __init__(self, server: Server, prefix: str, threads: int = 12) -> None:
        self.server, self.prefix = server, prefix
        self.acknowledged: list[str] = []
        self.broken = 0
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self._threads), "a registration thread hung"

    def _run(self, n: int) -> None:
        i = 0
        with fresh_connections(self.server) as client:
            while not self._stop.is_set():
                name = f"{self.prefix}{n}_{i}"
                i += 1
                try:
                    response = client.post("/users/register", json=credentials(name))
                except httpx.ConnectError:
                    time.sleep(0.01)  # the server is gone; wait to be stopped
                    continue
                except httpx.HTTPError:
                    self.broken += 1
                    continue
                if response.status_code == 201:
                    self.acknowledged.append(name)
                else:
                    self.unexpected.append(f"{name}: {response.status_code} {response.text}")


def crash_and_recover(store: Path, workers: int) -> None:
    """Register continuously, SIGKILL every process mid-stream, restart: nothing acknowledged is lost."""
    server = Server(store, workers=workers)
    with server:
        workers_before = server.worker_pids()
        with RegistrationStream(server, "c") as stream:
            time.sleep(1.5)
            server.kill()
        assert not stream.unexpected, stream.unexpected[:5]
    assert len(stream.acknowledged) >= 20, f"only {len(stream.acknowledged)} registrations in 1.5 s"
    assert stream.broken >= 1, "no request was in flight when the server was killed"
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers_before), f"workers {workers_before} survived the kill"

    read_json(store)  # the snapshot parses: it is only ever replaced whole
    parse_journal(store)  # the journal may remain (a crash does not fold it); its complete lines parse

    restarted = Server(store, workers=workers, env=server.env)
    with restarted:
        statuses = asyncio.run(all_log_in(restarted.url, stream.acknowledged))
        failed = {name: code for name, code in statuses.items() if code != 200}
        assert not failed, f"{len(failed)} of {len(statuses)} acknowledged users cannot log in: {list(failed.items())[:5]}"
        assert_clean_stop(restarted)
    stored = Counter(usernames_in(store))
    assert set(stream.acknowledged) <= set(stored), set(stream.acknowledged) - set(stored)
    assert max(stored.values()) == 1, [name for name, n in stored.items() if n > 1]


# -- tests -------------------------------------------------------------------------------------


def test_four_workers_agree_on_every_registration(store: Path) -> None:
    """300 distinct names and 40 racers for one name, all at once, spread over 4 workers: each
    worker keeps its own copy in memory, so only the store's cross-process lock can make the shared
    name have exactly one winner; a clean stop then leaves users.json alone, complete, mode 0600."""
    distinct = [f"user{i:03d}" for i in range(300)]
    names = distinct + ["shared"] * 40
    random.Random(7).shuffle(names)

    async def register_all(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(names), max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            return await asyncio.gather(*(client.post("/users/register", json=credentials(n)) for n in names))

    # 340 hashes queued at once from one address: without HASH_QUEUE_MAX_WAIT_SECONDS=0 the hashing
    # queue's bound rightly answers some of them 503 (tests/test_abuse.py covers that bound).
    with Server(store, workers=4, HASH_QUEUE_MAX_WAIT_SECONDS="0") as server:
        responses = asyncio.run(register_all(server.url))
        by_name: dict[str, list[httpx.Response]] = {}
        for name, response in zip(names, responses, strict=True):
            by_name.setdefault(name, []).append(response)
        for name in distinct:
            (response,) = by_name[name]
            assert response.status_code == 201, f"{name}: {response.status_code} {response.text}"
            assert response.json()["username"] == name
        shared = by_name["shared"]
        assert Counter(r.status_code for r in shared) == {201: 1, 409: 39}, [(r.status_code, r.text) for r in shared]
        assert all(r.json() == TAKEN for r in shared if r.status_code == 409)
        assert len(server.served_by("POST /users/register")) == 4, "registrations did not reach all 4 workers"

        # Registered through one worker, seen and usable through all of them (reads first: a
        # worker that has not written since the burst must still see the other workers' users).
        token = login(server, "user123")["token"]
        last_page = "/users/list?limit=100&cursor=" + encode_cursor("user249")  # user250 .. user299
        for response in on_every_worker(server, "GET", last_page, 200, headers=bearer(token)):
            page = response.json()
            assert [u["username"] for u in page["users"]] == distinct[250:] and page["next_cursor"] is None
        logins = on_every_worker(server, "POST", "/users/login", 200, json=credentials("user123"))
        for response in on_every_worker(server, "GET", "/users/me", 200, headers=bearer(logins[-1].json()["token"])):
            assert response.json()["username"] == "user123"

        assert_clean_stop(server)

    stored = usernames_in(store)
    assert len(stored) == 301
    assert Counter(stored) == Counter(distinct + ["shared"])
    assert stat.S_IMODE(store.stat().st_mode) == 0o600, oct(store.stat().st_mode)


def test_kill_9_loses_no_acknowledged_registration(store: Path) -> None:
    """A 201 is sent only after the journal is fsynced: SIGKILL while registrations stream in,
    restart, and every user that was told 201 can log in; a clean stop then folds the journal."""
    crash_and_recover(store, workers=1)


def test_kill_9_of_every_worker_loses_no_acknowledged_registration(store: Path) -> None:
    """The same with two workers writing the one journal, both killed at once: a crash mid-write
    of one worker leaves a tail the next writer must cut, not corrupt."""
    crash_and_recover(store, workers=2)


def test_truncated_snapshot_refuses_to_start(store: Path) -> None:
    """A users.json that is not JSON stops the service with a message naming it, and is left
    byte-for-byte as it was (never replaced by an empty store)."""
    store.write_bytes(b'{"users": [')
    server = Server(store).launch()
    assert server.wait_exit(15) != 0, server.stderr
    assert str(store) in server.stderr, server.stderr
    assert store.read_bytes() == b'{"users": ['


def test_corrupt_journal_record_refuses_to_start(store: Path) -> None:
    """A garbage line in the middle of the journal is damage, not a torn write: refuse to start,
    name the journal, touch neither file."""
    snapshot = b'{"users": []}\n'
    record = json.dumps([["users", "u1", {"id": "u1", "username": "alice", "password": bcrypt_hash(PASSWORD)}]])
    journal = b'[["users", "u0", {"id": "u0", "usern\xff garbage\n' + record.encode() + b"\n"
    store.write_bytes(snapshot)
    journal_of(store).write_bytes(journal)
    server = Server(store).launch()
    assert server.wait_exit(15) != 0, server.stderr
    assert str(journal_of(store)) in server.stderr, server.stderr
    assert journal_of(store).read_bytes() == journal
    assert store.read_bytes() == snapshot


def test_torn_last_journal_line_is_a_crash_not_corruption(store: Path) -> None:
    """A half-written last record without its newline is what a crash mid-append leaves: the
    service starts, with every user from the complete records."""
    store.write_bytes(b'{"users": []}\n')
    lines = [json.dumps([["users", name, {"id": name, "username": name, "password": bcrypt_hash(PASSWORD)}]])
             for name in ("alice", "bob", "carol")]
    journal_of(store).write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    with Server(store) as server:
        login(server, "alice")
        login(server, "bob")
        with fresh_connections(server) as client:
            response = client.post("/users/login", json=credentials("carol"))
        assert response.status_code == 401, response.text


def test_store_written_like_the_book_loads_unchanged(store: Path) -> None:
    """The book's users.json (a list, an int id, a bcrypt hash) is read as it is: marko logs in."""
    marko = {"id": 1, "username": "marko", "password": bcrypt_hash("marko123")}
    original = json.dumps({"users": [marko]}, indent=2).encode()
    store.write_bytes(original)
    with Server(store) as server:
        token = login(server, "marko", "marko123")["token"]
        with fresh_connections(server) as client:
            me = client.get("/users/me", headers=bearer(token))
            listed = client.get("/users/list", headers=bearer(token))
        assert me.status_code == 200, me.text
        assert_account(me.json(), "marko", "1", own=True)
        assert me.json()["created_at"] is None  # not known for an account older than the field
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["users"]) == 1
        assert_account(listed.json()["users"][0], "marko", "1")
        assert store.read_bytes() == original, "the snapshot was rewritten while serving"
        assert_clean_stop(server)
    [kept] = read_json(store)["users"]  # as it was, plus the login's time (an attribute added since the book)
    assert kept.pop("last_login_at") > 0 and kept == marko


def test_logout_is_refused_by_every_worker_and_after_restart(store: Path) -> None:
    """Logout ends the session in the shared store: each worker, with its own token cache, must
    refuse the old access and refresh tokens, and so must a restarted service; a second session
    of the same user keeps working, which shows the refusals are revocation and not a lost key."""
    server = Server(store, workers=2)
    with server:
        register(server, "alice")
        revoked = login(server, "alice")
        other = login(server, "alice")
        with fresh_connections(server) as client:
            response = client.post("/users/logout", headers=bearer(revoked["token"]))
            assert response.status_code == 204, response.text
            refreshed = client.post("/users/refresh", json={"refresh_token": revoked["refresh_token"]})
            assert refreshed.status_code == 401, refreshed.text
        on_every_worker(server, "GET", "/users/me", 401, headers=bearer(revoked["token"]))
        on_every_worker(server, "GET", "/users/me", 200, headers=bearer(other["token"]))
        assert_clean_stop(server)

    with Server(store, workers=2, env=server.env) as restarted:
        with fresh_connections(restarted) as client:
            old = client.get("/users/me", headers=bearer(revoked["token"]))
            assert old.status_code == 401, old.text
            assert old.json() == {"detail": "Invalid token"}
            refreshed = client.post("/users/refresh", json={"refresh_token": revoked["refresh_token"]})
            assert refreshed.status_code == 401, refreshed.text
            still = client.get("/users/me", headers=bearer(other["token"]))
            assert still.status_code == 200, still.text
        new = login(restarted, "alice")
        on_every_worker(restarted, "GET", "/users/me", 200, headers=bearer(new["token"]))


def test_anonymous_cart_survives_a_restart(store: Path) -> None:
    """A visitor's cart lives in the store, not in the process: it is there after a restart."""
    server = Server(store)
    with server:
        with fresh_connections(server) as client:
            response = client.post("/anonymous-login")
            assert response.status_code == 200, response.text
            token = response.json()["access_token"]
            assert client.put("/cart/items/1", json={"quantity": 2}, headers=bearer(token)).status_code == 200
            response = client.put("/cart/items/3", json={"quantity": 1}, headers=bearer(token))
            assert response.status_code == 200, response.text
        cart = response.json()
        assert cart == {"items": [{"item_id": 1, "quantity": 2}, {"item_id": 3, "quantity": 1}]}
        assert_clean_stop(server)

    with Server(store, env=server.env) as restarted, fresh_connections(restarted) as client:
        response = client.get("/cart", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json() == cart


def test_anonymous_rate_limit_is_shared_by_the_workers(store: Path) -> None:
    """The per-address allowance is counted in the store, so two workers together allow 5, not 5
    each; then every worker refuses, with a Retry-After in whole seconds."""
    with Server(store, workers=2, ANONYMOUS_LOGIN_RATE_LIMIT="5") as server:
        with fresh_connections(server) as client:
            responses = [client.post("/anonymous-login") for _ in range(8)]
        assert Counter(r.status_code for r in responses) == {200: 5, 429: 3}, [r.status_code for r in responses]
        refused = [r for r in responses if r.status_code == 429]
        refused += on_every_worker(server, "POST", "/anonymous-login", 429, min_calls=4)
        for response in refused:
            retry_after = response.headers.get("Retry-After", "")
            assert retry_after.isdigit() and 0 < int(retry_after) <= 3600, response.headers


def test_generated_secret_is_shared_by_the_workers_and_kept(store: Path) -> None:
    """Without JWT_SECRET the workers agree on one generated key, kept beside the store (0600), so
    a token signed by one worker is accepted by the others and after a restart."""
    server = Server(store, workers=2, JWT_SECRET=None)
    secret_file = store.with_name(store.name + ".secret")
    with server:
        assert secret_file.exists(), f"no {secret_file}; files: {sorted(p.name for p in store.parent.iterdir())}"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, oct(secret_file.stat().st_mode)
        secret = secret_file.read_bytes()
        assert len(secret.strip()) >= 32
        register(server, "alice")
        token = login(server, "alice")["token"]
        on_every_worker(server, "GET", "/users/me", 200, headers=bearer(token))
        assert_clean_stop(server)

    with Server(store, workers=2, env=server.env) as restarted:
        on_every_worker(restarted, "GET", "/users/me", 200, headers=bearer(token))
    assert secret_file.read_bytes() == secret


@pytest.mark.parametrize("workers", [1, 2])
def test_short_jwt_secret_refuses_to_start(store: Path, workers: int) -> None:
    """A guessable signing key is a configuration error, reported at startup rather than served;
    with --workers the supervisor must stop too, not respawn failing workers forever."""
    server = Server(store, workers=workers, JWT_SECRET="x" * 10).launch()
    server.wait_exit(15)
    assert "JWT_SECRET" in server.stderr, server.stderr
    if workers == 1:  # a --workers supervisor exits 0 after a failed start (uvicorn 0.54)
        assert server.process.returncode != 0, server.stderr
