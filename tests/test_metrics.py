"""Metrics (issue 21): counters move by exactly what a test did, summed over ``--workers 2``; route
labels are templates; ``/metrics``'s access rules; ``/health/ready`` follows the store."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pg_support
import pytest
from fastapi import APIRouter
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from app import create_app
from conftest import Client, bearer, make_settings, running
from server import Server, server_env
from settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CLOSE = {"Connection": "close"}  # a new connection per request: uvicorn's workers share the socket


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def settled(scrape: Callable[[], Samples]) -> Samples:
    """The figures once two scrapes in a row agree: a worker counts a request as its answer
    finishes, so the client may scrape a moment before the last one is counted."""
    def counted(samples: Samples) -> Samples:
        return {k: v for k, v in samples.items() if k[0].startswith(("http_", "auth_"))}

    last = scrape()
    for _ in range(50):
        time.sleep(0.05)
        again = scrape()
        if counted(again) == counted(last):
            return again
        last = again
    raise AssertionError("the figures never settled")


def label_sets(samples: Samples, name: str) -> set[frozenset[tuple[str, str]]]:
    return {labels for (n, labels) in samples if n == name}


# -- real processes: two workers --------------------------------------------------------------------


def test_counters_move_by_what_was_done_summed_over_two_workers(tmp_path: Path) -> None:
    with Server(tmp_path / "users.json", workers=2) as server, \
            httpx.Client(base_url=server.url, timeout=30, headers=CLOSE) as http:

        def scrape() -> Samples:
            response = http.get("/metrics")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            return parse(response.text)

        def login(password: str = "password123") -> httpx.Response:
            return http.post("/users/login", json={"username": "marko", "password": password})

        def refresh(token: str) -> httpx.Response:
            return http.post("/users/refresh", json={"refresh_token": token})

        assert http.post("/users/register", json={"username": "marko", "password": "password123"}).status_code == 201
        before = scrape()
        successes = 0
        while successes < 4 or len(server.served_by("POST /users/login")) < 2:
            assert login().status_code == 200
            successes += 1
            assert successes < 200, "the logins did not reach both workers"
        for _ in range(3):
            assert login("wrong-password").status_code == 401
        # refresh: A -> B (rotated), A again within the grace (grace), B -> C (rotated),
        # A once more (reuse: the session ends), garbage (invalid)
        a = login().json()["refresh_token"]
        successes += 1
        b = refresh(a)
        assert b.status_code == 200
        assert refresh(a).status_code == 200
        assert refresh(b.json()["refresh_token"]).status_code == 200
        assert refresh(a).status_code == 401
        assert refresh("not-a-token").status_code == 401
        # a revoked session
        session = login().json()
        successes += 1
        assert http.post("/users/logout", headers=bearer(session["token"])).status_code == 204
        assert http.get("/users/me", headers=bearer(session["token"])).status_code == 401

        after = settled(scrape)
        assert delta(before, after, "auth_logins_total", outcome="success") == successes
        assert delta(before, after, "auth_logins_total", outcome="bad_credentials") == 3
        for outcome in ("locked", "throttled", "shed", "challenge_required"):
            assert delta(before, after, "auth_logins_total", outcome=outcome) == 0
        assert {o: delta(before, after, "auth_refresh_total", outcome=o)
                for o in ("rotated", "grace", "reuse_detected", "invalid")} == \
            {"rotated": 2, "grace": 1, "reuse_detected": 1, "invalid": 1}
        assert delta(before, after, "auth_sessions_ended_total", reason="logout") == 1
        assert delta(before, after, "auth_sessions_ended_total", reason="reuse_detected") == 1
        assert delta(before, after, "http_requests_total", method="POST", route="/users/login", status="200") \
            == successes
        assert delta(before, after, "http_requests_total", method="POST", route="/users/refresh", status="401") == 2
        assert value(after, "auth_registrations_total", outcome="created") == 1
        # every hash was measured (register 1, logins, and none for the refreshes); none waits now
        hashes = 1 + successes + 3
        assert value(after, "auth_hash_seconds_count") == value(after, "auth_hash_wait_seconds_count") == hashes
        assert value(after, "auth_hash_queue_depth") == 0
        assert value(after, "store_commit_seconds_count") > 0
        # /metrics counts nothing of itself, and whichever worker answers gives the same sums
        assert not any(dict(labels).get("route") == "/metrics" for labels in label_sets(after, "http_requests_total"))
        counted = {k: v for k, v in after.items() if k[0] in ("auth_logins_total", "http_requests_total")}
        for _ in range(6):
            again = scrape()
            assert {k: v for k, v in again.items() if k[0] in ("auth_logins_total", "http_requests_total")} == counted

        # Route labels are templates; a scan of random paths adds no label.
        token = session["token"]
        assert http.get("/items/3", headers=bearer(token)).status_code == 401  # logged out: still /items/{item_id}
        assert http.get(f"/{secrets.token_hex(6)}").status_code == 404
        before_scan = scrape()
        for i in range(200):
            path = f"/{secrets.token_hex(4)}/{i}" if i % 2 else f"/items/{secrets.randbelow(10**9)}"
            http.get(path)
        after_scan = scrape()
        assert label_sets(after_scan, "http_requests_total") == label_sets(before_scan, "http_requests_total")
        assert delta(before_scan, after_scan, "http_requests_total", method="GET", route="<unmatched>",
                     status="404") == 100
        assert delta(before_scan, after_scan, "http_requests_total", method="GET", route="/items/{item_id}",
                     status="401") == 100
        routes = {dict(labels)["route"] for labels in label_sets(after_scan, "http_requests_total")}
        assert all("{" in r or r in ("<unmatched>", "/health", "/users/login", "/users/register",
                                     "/users/refresh", "/users/logout", "/users/me") for r in routes), routes


# -- in process (both stores) -----------------------------------------------------------------------

@asynccontextmanager
async def app_client(settings: Settings, client_addr: tuple[str, int] = ("127.0.0.1", 123),
                     routers: tuple[APIRouter, ...] = ()) -> AsyncIterator[httpx.AsyncClient]:
    """The app over ASGI as a client at ``client_addr`` sees it; app exceptions become answers."""
    app = create_app(settings)
    for router in routers:
        app.include_router(router)
    transport = httpx.ASGITransport(app=app, client=client_addr, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def metrics_of(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


@pytest.mark.anyio
async def test_login_refusals_are_counted_by_kind(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_max_failures=2, login_rate_limit=6)
    async for client in running(settings):
        await client.register("marko", "password123")
        before = await metrics_of(client)
        answers = [(await client.login("marko", "wrong-password")).status_code for _ in range(3)]
        assert answers == [401, 401, 429]  # the third: locked
        assert (await client.login("marko", "password123")).status_code == 429  # still locked (not counted: 4th)
        answers = [(await client.login("ana", "password123")).status_code for _ in range(3)]
        assert answers == [401, 401, 429]  # the 7th attempt from this address: over its budget
        after = await metrics_of(client)
        assert delta(before, after, "auth_logins_total", outcome="bad_credentials") == 4
        assert delta(before, after, "auth_logins_total", outcome="locked") == 2
        assert delta(before, after, "auth_logins_total", outcome="throttled") == 1
        assert delta(before, after, "auth_logins_total", outcome="success") == 0


@pytest.mark.anyio
async def test_shed_logins_are_counted_and_their_503_names_the_request(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, bcrypt_rounds=10, hash_queue_max_wait_seconds=0.1, login_max_failures=0)
    async for client in running(settings):
        await client.register("marko", "marko123")
        before = await metrics_of(client)
        answers = await asyncio.gather(*(client.login(f"guess{i}", "wrong-pass") for i in range(30)))
        after = await metrics_of(client)
        busy = [r for r in answers if r.status_code == 503]
        assert busy
        # unproven logins shed by the queue are asked for a challenge (issue 18): counted as that
        assert all(r.json()["challenge_required"] is True for r in busy)
        assert delta(before, after, "auth_logins_total", outcome="challenge_required") == len(busy)
        assert delta(before, after, "auth_logins_total", outcome="bad_credentials") == 30 - len(busy)
        for r in busy:
            assert r.json()["request_id"] == r.headers["x-request-id"]


@pytest.mark.anyio
async def test_postgresql_cache_and_notify_figures(settings: Settings, backend: str) -> None:
    async for client in running(settings):
        session = await client.session_for("marko")
        before = await metrics_of(client)
        for _ in range(5):
            assert (await client.get("/users/me", headers=bearer(session["token"]))).status_code == 200
        assert (await client.post("/users/logout", headers=bearer(session["token"]))).status_code == 204
        deadline = time.monotonic() + 10
        while True:  # the NOTIFY comes back to this process's own listener
            after = await metrics_of(client)
            if backend == "json" or delta(before, after, "store_notify_lag_seconds_count") >= 1 \
                    or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        looked_up = (delta(before, after, "store_cache_requests_total", result="hit")
                     + delta(before, after, "store_cache_requests_total", result="miss"))
        assert delta(before, after, "store_commit_seconds_count") >= 1  # the logout, on either store
        if backend == "postgres":
            assert delta(before, after, "store_cache_requests_total", result="hit") >= 4
            assert looked_up >= 5
            assert delta(before, after, "store_notify_lag_seconds_count") >= 1
        else:
            assert looked_up == 0  # the file store has no such cache


@pytest.mark.anyio
async def test_metrics_access_with_a_token(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_token": SecretStr("s3cret-metrics-token-for-tests")})
    for addr in (("127.0.0.1", 123), ("203.0.113.5", 1234)):
        async with app_client(settings, addr) as client:
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/metrics", headers=bearer("wrong"))).status_code == 401
            refused = await client.get("/metrics", headers={"Authorization": "Basic czNjcmV0"})
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            ok = await client.get("/metrics", headers=bearer("s3cret-metrics-token-for-tests"))
            assert ok.status_code == 200 and "auth_logins_total" in ok.text


@pytest.mark.anyio
async def test_metrics_without_a_token_answer_loopback_only(settings: Settings) -> None:
    async with app_client(settings, ("203.0.113.5", 1234)) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/health")).status_code == 200
    for addr in (("127.0.0.1", 123), ("::1", 123)):
        async with app_client(settings, addr) as client:
            response = await client.get("/metrics")
            assert response.status_code == 200 and "http_requests_total" in response.text
            assert "process_" in response.text and "python_" in response.text  # single process: the library's


@pytest.mark.anyio
async def test_openapi_lists_readiness_and_not_metrics(client: Client) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/metrics" not in paths
    assert {"200", "503"} <= set(paths["/health/ready"]["get"]["responses"])
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


@pytest.mark.anyio
async def test_every_answer_has_a_request_id_and_a_500_names_it(settings: Settings) -> None:
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async with app_client(settings, routers=(router,)) as client:
        assert (await client.get("/health", headers={"X-Request-ID": "abc.DEF-1_2"})).headers["x-request-id"] \
            == "abc.DEF-1_2"
        for insane in ("has space", "x" * 65, "é"):
            rid = (await client.get("/health", headers={"X-Request-ID": insane.encode()})).headers["x-request-id"]
            assert rid != insane and len(rid) == 16
        too_big = await client.get("/health", headers={"X-Big": "x" * 17000})
        assert too_big.status_code == 431 and too_big.headers["x-request-id"]
        body = await client.post("/users/login", content=b"x" * 70000, headers={"Content-Type": "application/json"})
        assert body.status_code == 413 and body.headers["x-request-id"]
        failed = await client.get("/boom", headers={"X-Request-ID": "req-500"})
        assert failed.status_code == 500
        assert failed.json() == {"detail": "Internal Server Error", "request_id": "req-500"}
        assert failed.headers["x-request-id"] == "req-500"


# -- readiness with PostgreSQL stopped --------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[pg_support.PrivateCluster]:
    cluster = pg_support.PrivateCluster()
    try:
        yield cluster.create()
    finally:
        cluster.drop()


def _poll(http: httpx.Client, path: str, want: int, seconds: float = 30) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        response = http.get(path)
        if response.status_code == want or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_readiness_follows_postgresql(tmp_path: Path, own_cluster: pg_support.PrivateCluster) -> None:
    env = server_env(tmp_path / "users.json", DATABASE_URL=own_cluster.database(), DATABASE_POOL_SIZE="2")
    with Server(tmp_path / "users.json", env=env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/health/ready").json() == {"status": "ready"}
        own_cluster.control("stop")
        down = _poll(http, "/health/ready", 503)
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1" and down.json()["request_id"] == down.headers["x-request-id"]
        assert http.get("/health").status_code == 200  # liveness never touches the store
        own_cluster.control("start")
        back = _poll(http, "/health/ready", 200)
        assert back.status_code == 200 and back.json() == {"status": "ready"}
