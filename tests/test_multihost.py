"""Several app hosts on one PostgreSQL database: real uvicorn processes, as a load balancer sees them.

Each host is its own ``uvicorn app:app --workers 2`` in its own working directory (no file is
shared: ``DATABASE_URL`` selects the PostgreSQL backend, ``JWT_SECRET`` is the one thing the hosts
have in common besides the database), and each test gets a throw-away database
(tests/pg_support.py). What only separate hosts can show: one winner per username across hosts, a
logout on one host refusing the token on the other (LISTEN/NOTIFY, not the 30 s age bound), lockout
and rate budgets counted for the whole service, a ``kill -9`` of a host, and a PostgreSQL restart
under load, which must give 503 + ``Retry-After`` (never a 500, never a hang), then recover by
itself, losing nothing that was acknowledged. The restart test runs on a cluster of its own, so the
shared test server keeps serving everything else.

Speed is measured in bench/ (the revocation delay's p99 over 200 trials is a bench row); here a
deadline only bounds a wait, far from the figure the bench checks.
"""

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pg_support
import pytest

from conftest import Databases, bearer
from server import Server, server_env

PASSWORD = "password123"
TIMEOUT = 10  # the clients' timeout: an answer later than this is a hang
REVOKED_WITHIN = 2.0  # seconds: far below the 30 s age bound, so only an invalidation explains a 401


def credentials(username: str, password: str = PASSWORD) -> dict[str, str]:
    return {"username": username, "password": password}


def fresh_connections(server: Server) -> httpx.Client:
    """A client that opens a new connection per request, so that both workers of a host answer."""
    return httpx.Client(base_url=server.url, timeout=TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0))


@contextmanager
def hosts(tmp_path: Path, database_url: str, count: int = 2, **overrides: str) -> Iterator[list[Server]]:
    """``count`` hosts (``--workers 2`` each) on ``database_url``, started together, stopped after.

    Every host must still be serving from the database only: no store file in its directory."""
    secret = secrets.token_urlsafe(36)
    servers = []
    for name in "abcd"[:count]:
        workdir = tmp_path / f"host-{name}"
        workdir.mkdir(exist_ok=True)
        env = server_env(workdir / "users.json", DATABASE_URL=database_url, JWT_SECRET=secret,
                         DATABASE_POOL_SIZE="4", **overrides)
        servers.append(Server(workdir / "users.json", workers=2, cwd=workdir, env=env))
    with ExitStack() as stack:
        for server in servers:  # all launched before any is awaited: they start (and migrate) together
            stack.enter_context(server.launch())
        for server in servers:
            server.wait_ready(60)
        yield servers
        for server in servers:
            assert not server.users_file.exists(), f"{server.users_file} written: the host used the JSON store"


def start_again(old: Server) -> Server:
    """Another process for the host ``old`` was (same directory and configuration, new port)."""
    return Server(old.users_file, workers=2, cwd=old.cwd, env=old.env).start(60)


@pytest.fixture
def database(databases: Databases, tmp_path: Path) -> str:
    """A migrated, empty database of this test's own."""
    return databases.url_for(tmp_path / "database")


async def register_many(pairs: list[tuple[Server, str]]) -> list[int]:
    """Register every (host, name) at once; the statuses, in order."""
    limits = httpx.Limits(max_connections=len(pairs), max_keepalive_connections=0)
    clients = {server.url: httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits)
               for server, _ in pairs}
    try:
        answers = await asyncio.gather(*(clients[server.url].post("/users/register", json=credentials(name))
                                         for server, name in pairs))
    finally:
        for client in clients.values():
            await client.aclose()
    return [answer.status_code for answer in answers]


async def logins(pairs: list[tuple[Server, str]]) -> list[int]:
    """Log every (host, name) in, 16 at a time; the statuses, in order."""
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(server: Server, name: str) -> int:
            async with gate:
                return (await client.post(server.url + "/users/login", json=credentials(name))).status_code
        return list(await asyncio.gather(*(one(server, name) for server, name in pairs)))


def token(server: Server, username: str) -> str:
    with fresh_connections(server) as client:
        response = client.post("/users/login", json=credentials(username))
    assert response.status_code == 200, response.text
    return response.json()["token"]


def all_usernames(server: Server, access_token: str) -> list[str]:
    """Every username, through GET /users/list's pages."""
    names: list[str] = []
    cursor: str | None = None
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, headers=bearer(access_token)) as client:
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            page = client.get("/users/list", params=params)
            assert page.status_code == 200, page.text
            names += [user["username"] for user in page.json()["users"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return names


# -- one store for every host --------------------------------------------------------------------


def test_300_concurrent_registrations_over_two_hosts_give_300_users(tmp_path: Path,
                                                                   databases: Databases) -> None:
    """On an empty, unmigrated database: the hosts start together and migrate it once (advisory lock).
    The hashing queue's early 503 is off: 150 registrations at once per host are to be served, not shed."""
    with hosts(tmp_path, databases.unmigrated(), HASH_QUEUE_MAX_WAIT_SECONDS="0") as (a, b):
        names = [f"user{i:03d}" for i in range(300)]
        statuses = asyncio.run(register_many([((a, b)[i % 2], name) for i, name in enumerate(names)]))
        assert Counter(statuses) == {201: 300}
        for server in (a, b):
            listed = all_usernames(server, token(server, names[0]))
            assert sorted(listed) == names
        assert Counter(asyncio.run(logins([((b, a)[i % 2], name) for i, name in enumerate(names)]))) == {200: 300}


def test_40_registrations_of_one_name_over_two_hosts_have_one_winner(tmp_path: Path, database: str) -> None:
    with hosts(tmp_path, database, HASH_QUEUE_MAX_WAIT_SECONDS="0") as (a, b):
        statuses = asyncio.run(register_many([((a, b)[i % 2], "contested") for i in range(40)]))
        assert Counter(statuses) == {201: 1, 409: 39}
        for server in (a, b):
            assert all_usernames(server, token(server, "contested")) == ["contested"]


# -- revocation reaches the other host -----------------------------------------------------------


def revoke_through(server: Server, how: str, session: dict[str, str]) -> None:
    """End the login ``session`` through ``server``, as ``how`` does."""
    access = session["token"]
    with fresh_connections(server) as client:
        if how == "logout":
            response = client.post("/users/logout", headers=bearer(access))
        elif how == "logout-all":
            response = client.post("/users/logout-all", headers=bearer(access))
        elif how == "delete-account":
            response = client.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=bearer(access))
        elif how == "password-change":  # from another session: every other session of the account ends
            other = client.post("/users/login", json=credentials("alice")).json()["token"]
            response = client.post("/users/me/password", headers=bearer(other),
                                   json={"current_password": PASSWORD, "new_password": "another-pass-1"})
        else:  # refresh-token reuse: the refresh token the session spent, shown again, ends the session
            response = client.post("/users/refresh", json={"refresh_token": session["spent_refresh_token"]})
            assert response.status_code == 401, response.text
            return
    assert response.status_code == 204, response.text


@pytest.mark.parametrize("how", ["logout", "logout-all", "delete-account", "password-change", "refresh-reuse"])
def test_a_token_revoked_on_one_host_is_refused_on_the_other(tmp_path: Path, database: str, how: str) -> None:
    with hosts(tmp_path, database, REFRESH_REUSE_GRACE_SECONDS="0") as (a, b), fresh_connections(a) as client:
        assert client.post("/users/register", json=credentials("alice")).status_code == 201
        session = client.post("/users/login", json=credentials("alice")).json()
        if how == "refresh-reuse":  # rotated on B: A is to see the new access token
            with fresh_connections(b) as on_b:
                refreshed = on_b.post("/users/refresh", json={"refresh_token": session["refresh_token"]})
            assert refreshed.status_code == 200, refreshed.text
            session = {**refreshed.json(), "spent_refresh_token": session["refresh_token"]}
        access = session["token"]
        for reads in range(200):  # until both workers of A hold the session in their caches
            assert client.get("/users/me", headers=bearer(access)).status_code == 200
            if reads >= 20 and len(a.served_by("GET /users/me")) == 2:
                break
        assert len(a.served_by("GET /users/me")) == 2, "the reads did not reach both workers of A"

        revoke_through(b, how, session)
        revoked_at = time.monotonic()
        answers: list[int] = []
        while time.monotonic() - revoked_at < REVOKED_WITHIN and answers[-10:] != [401] * 10:
            answers.append(client.get("/users/me", headers=bearer(access)).status_code)
        delay = time.monotonic() - revoked_at
    assert answers[-10:] == [401] * 10, f"A still accepted the token {delay:.3f} s after B revoked it: {answers}"
    assert set(answers) <= {200, 401}


# -- budgets and lockouts are the service's, not a host's ------------------------------------------


def test_the_login_lockout_counts_failures_on_every_host(tmp_path: Path, database: str) -> None:
    with hosts(tmp_path, database, LOGIN_MAX_FAILURES="3", LOGIN_LOCKOUT_SECONDS="600") as (a, b), \
            fresh_connections(a) as on_a, fresh_connections(b) as on_b:
        assert on_a.post("/users/register", json=credentials("bob")).status_code == 201
        wrong = credentials("bob", "wrong-password")
        assert [c.post("/users/login", json=wrong).status_code for c in (on_a, on_b, on_a)] == [401] * 3
        for client in (on_b, on_a):
            locked = client.post("/users/login", json=credentials("bob"))
            assert locked.status_code == 429, locked.text
            assert 0 < int(locked.headers["Retry-After"]) <= 600


def test_the_anonymous_login_budget_is_shared_by_the_hosts(tmp_path: Path, database: str) -> None:
    """A's ten visitors use up the address's budget; B learns it (counts are shared about once a
    second) instead of granting ten more of its own."""
    limit = 10
    with hosts(tmp_path, database, ANONYMOUS_LOGIN_RATE_LIMIT=str(limit)) as (a, b), \
            fresh_connections(a) as on_a, fresh_connections(b) as on_b:
        assert [on_a.post("/anonymous-login").status_code for _ in range(limit)] == [200] * limit
        granted_by_b = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = on_b.post("/anonymous-login")
            if answer.status_code == 429:
                assert int(answer.headers["Retry-After"]) > 0
                break
            assert answer.status_code == 200, answer.text
            granted_by_b += 1
            time.sleep(0.5)
        else:
            pytest.fail(f"B granted {granted_by_b} more visitors over 20 s after A used the budget")
        assert granted_by_b < limit, "B counted a budget of its own"
        assert on_a.post("/anonymous-login").status_code == 429


# -- faults ------------------------------------------------------------------------------------


@dataclass
class Stream:
    """Registrations streamed at some hosts by several clients each, and what came back."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # username -> the host that said 201
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # any answer but 201, or a 503 without Retry-After
    transport_errors: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, server: Server, label: str, clients: int = 6) -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
            await asyncio.gather(*(self._one(client, f"{label}{k}n") for k in range(clients)))

    async def _one(self, client: httpx.AsyncClient, prefix: str) -> None:
        label = prefix[0]
        i = 0
        while not self.stop.is_set():
            name = f"{prefix}{i}"
            i += 1
            try:
                answer = await client.post("/users/register", json=credentials(name))
            except httpx.TimeoutException:
                self.unexpected.append(f"{name}: no answer within {TIMEOUT} s")
                continue
            except httpx.TransportError:
                self.transport_errors[label] += 1
                if self.transport_errors[label] % 20 == 0:
                    await asyncio.sleep(0.05)  # a host that is gone: do not spin
                continue
            self.statuses[(label, answer.status_code)] += 1
            if answer.status_code == 201:
                self.acknowledged[name] = label
            elif answer.status_code == 503 and answer.headers.get("Retry-After", "").isdigit() \
                    and "detail" in answer.json():
                await asyncio.sleep(0.05)
            else:
                self.unexpected.append(f"{name}: {answer.status_code} {answer.headers} {answer.text[:200]}")

    async def read(self, server: Server, label: str, access_token: str, clients: int = 2) -> None:
        """Protected reads (``GET /users/me``) beside the registrations: 200, or 503 + Retry-After."""
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits,
                                     headers=bearer(access_token)) as client:
            async def one() -> None:
                while not self.stop.is_set():
                    try:
                        answer = await client.get("/users/me")
                    except httpx.TimeoutException:
                        self.unexpected.append(f"{label} GET /users/me: no answer within {TIMEOUT} s")
                        continue
                    self.statuses[(label, answer.status_code)] += 1
                    if answer.status_code == 503 and answer.headers.get("Retry-After", "").isdigit():
                        await asyncio.sleep(0.05)
                    elif answer.status_code != 200:
                        self.unexpected.append(f"{label} GET /users/me: {answer.status_code} {answer.text[:200]}")
            await asyncio.gather(*(one() for _ in range(clients)))

    def count(self, label: str, status: int) -> int:
        return self.statuses[(label, status)]

    async def until(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {seconds} s: {what}; so far {dict(self.statuses)}, "
                                     f"unexpected {self.unexpected[:5]}")
            await asyncio.sleep(0.05)


def test_kill_9_of_one_host_under_load_loses_nothing_acknowledged(tmp_path: Path, database: str) -> None:
    with hosts(tmp_path, database) as (a, b):
        stream = Stream()

        async def scenario() -> None:
            runs = [asyncio.create_task(stream.run(a, "a")), asyncio.create_task(stream.run(b, "b"))]
            await stream.until(lambda: stream.count("a", 201) >= 50, 60, "50 registrations on A")
            await asyncio.to_thread(a.kill)  # SIGKILL to A's supervisor and both workers, requests in flight
            acked_on_b = stream.count("b", 201)
            await stream.until(lambda: stream.count("b", 201) >= acked_on_b + 50, 60, "50 more on B")
            stream.stop.set()
            await asyncio.gather(*runs)

        asyncio.run(scenario())
        assert stream.unexpected == []
        assert stream.transport_errors["b"] == 0
        assert stream.transport_errors["a"] > 0, "A was killed after the stream had stopped"
        names = sorted(stream.acknowledged)
        assert Counter(asyncio.run(logins([(b, name) for name in names]))) == {200: len(names)}
        with start_again(a) as a2:  # the killed host comes back with nothing to recover: its state is the database
            assert Counter(asyncio.run(logins([(a2, name) for name in names]))) == {200: len(names)}


@pytest.fixture
def own_cluster() -> Iterator[pg_support.PrivateCluster]:
    cluster = pg_support.PrivateCluster()
    try:
        yield cluster.create()
    finally:
        cluster.drop()


def test_a_postgresql_restart_under_load_gives_503s_then_recovers_losing_nothing(
        tmp_path: Path, own_cluster: pg_support.PrivateCluster) -> None:
    with hosts(tmp_path, own_cluster.database()) as (a, b):
        stream = Stream()

        with fresh_connections(a) as client:
            assert client.post("/users/register", json=credentials("reader")).status_code == 201
        access = token(a, "reader")

        async def scenario() -> None:
            runs = [asyncio.create_task(stream.run(a, "a")), asyncio.create_task(stream.run(b, "b")),
                    asyncio.create_task(stream.read(a, "a-read", access)),
                    asyncio.create_task(stream.read(b, "b-read", access))]
            await stream.until(lambda: min(stream.count(h, 201) for h in "ab") >= 20, 60, "20 registrations each")
            await asyncio.to_thread(own_cluster.control, "stop")  # fast mode: every connection is cut
            try:
                await stream.until(lambda: min(stream.count(h, 503) for h in "ab") >= 3, 30, "503s on both hosts")
            finally:
                await asyncio.to_thread(own_cluster.control, "start")
            before = {h: stream.count(h, 201) for h in "ab"}
            reads = {h: stream.count(h, 200) for h in ("a-read", "b-read")}
            await stream.until(lambda: all(stream.count(h, 201) >= before[h] + 20 for h in "ab")
                               and all(stream.count(h, 200) >= reads[h] + 20 for h in reads), 60,
                               "both hosts registering and reading again after the restart")
            stream.stop.set()
            await asyncio.gather(*runs)

        asyncio.run(scenario())
        assert stream.unexpected == [], stream.unexpected[:10]  # no 500, no hang, no 503 without Retry-After
        assert sum(stream.transport_errors.values()) == 0
        names = sorted(stream.acknowledged)
        for server in (a, b):
            assert Counter(asyncio.run(logins([(server, name) for name in names]))) == {200: len(names)}
            with fresh_connections(server) as client:
                assert client.get("/health").status_code == 200


def test_an_unreachable_database_at_start_up_exits_naming_it_without_the_password(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(12)
    port = pg_support.free_port()
    url = f"postgresql://farm:{password}@127.0.0.1:{port}/nowhere"
    env = server_env(tmp_path / "users.json", DATABASE_URL=url, DATABASE_STARTUP_TIMEOUT_SECONDS="2")
    server = Server(tmp_path / "users.json", cwd=tmp_path, env=env).launch()
    try:
        status = server.wait_exit(60)
    finally:
        server.kill()
    assert status != 0
    logs = server.stderr + server.stdout
    assert f"127.0.0.1:{port}/nowhere" in logs, logs[-2000:]
    assert password not in logs
