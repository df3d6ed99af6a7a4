"""The PostgreSQL backend's own guarantees, in-process (the HTTP suite runs on both backends;
tests/test_multihost.py covers real processes): revocation through NOTIFY between two apps on one
database, a lost LISTEN connection emptying the cache, 503 while the database refuses connections
and recovery after, the refusal of an unknown newer schema, a bounded wait for an unreachable
database, and refresh rotation as compare-and-set under concurrency."""

import asyncio
import time
from pathlib import Path

import jwt
import pg_support
import pytest

from conftest import Client, Databases, bearer, make_settings, running
from store import StoreError
from store.pg_base import LISTENER_NAME
from store.pg_store import PostgresStore

pytestmark = pytest.mark.anyio
DEADLINE = 5.0  # seconds: far below the cache's 30 s age bound, so passing proves the mechanism


async def until(check, deadline: float = DEADLINE) -> float:
    """Poll ``check`` (async, -> bool) until it holds; the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < deadline, "not within the deadline"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def two_hosts(tmp_path: Path, url: str):
    """Two apps (as two hosts) on one database, each with its own cache and LISTEN connection."""
    a = running(make_settings(tmp_path / "a", database_url=url))
    b = running(make_settings(tmp_path / "b", database_url=url))
    return a, b, await a.__anext__(), await b.__anext__()


async def status(client: Client, token: str) -> int:
    return (await client.get("/users/me", headers=bearer(token))).status_code


@pytest.mark.parametrize("how", ["logout", "logout-all", "delete"])
async def test_a_revocation_on_one_host_reaches_the_other(tmp_path: Path, databases: Databases, how: str) -> None:
    gen_a, gen_b, a, b = await two_hosts(tmp_path, databases.url_for(tmp_path))
    try:
        token = await a.token_for("marko")
        assert await status(a, token) == 200 and await status(b, token) == 200  # both have it cached
        if how == "logout":
            assert (await b.post("/users/logout", headers=bearer(token))).status_code == 204
        elif how == "logout-all":
            assert (await b.post("/users/logout-all", headers=bearer(token))).status_code == 204
        else:
            assert (await b.request("DELETE", "/users/me", json={"password": "password123"},
                                    headers=bearer(token))).status_code == 204
        await until(lambda: _refused(a, token))
    finally:
        for gen in (gen_a, gen_b):
            await gen.aclose()


async def _refused(client: Client, token: str) -> bool:
    return await status(client, token) == 401


async def test_an_upgraded_visitor_is_refused_on_the_other_host(tmp_path: Path, databases: Databases) -> None:
    gen_a, gen_b, a, b = await two_hosts(tmp_path, databases.url_for(tmp_path))
    try:
        visitor = await a.anonymous()
        assert (await a.get("/cart", headers=bearer(visitor))).status_code == 200  # cached on A
        assert (await b.register("ana", token=visitor)).status_code == 201
        await until(lambda: _cart_refused(a, visitor))
    finally:
        for gen in (gen_a, gen_b):
            await gen.aclose()


async def _cart_refused(client: Client, token: str) -> bool:
    return (await client.get("/cart", headers=bearer(token))).status_code == 401


async def test_a_lost_listener_empties_the_cache(tmp_path: Path, databases: Databases) -> None:
    """A's LISTEN connection is cut and the logout on B happens meanwhile, so A may never hear of
    it: A must still refuse the token well before the 30 s age bound (it empties its cache when
    the connection goes, and serves without it until it is back)."""
    url = databases.url_for(tmp_path)
    gen_a, gen_b, a, b = await two_hosts(tmp_path, url)
    try:
        token = await a.token_for("marko")
        assert await status(a, token) == 200
        name = url.rsplit("/", 1)[1]
        killed = pg_support.psql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                 f"datname = '{name}' AND application_name = '{LISTENER_NAME}'")
        assert int(killed) == 2  # one per host
        assert (await b.post("/users/logout", headers=bearer(token))).status_code == 204
        await until(lambda: _refused(a, token))
        other = await b.token_for("ana")  # and the caches work again once the listeners are back
        assert await status(a, other) == 200
    finally:
        for gen in (gen_a, gen_b):
            await gen.aclose()


async def test_a_database_refusing_connections_gives_503_then_recovery(tmp_path: Path, databases: Databases) -> None:
    url = databases.url_for(tmp_path)
    name = url.rsplit("/", 1)[1]
    async for client in running(make_settings(tmp_path, database_url=url)):
        token = await client.token_for("marko")
        pg_support.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            pg_support.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            response = await client.put("/cart/items/1", json={"quantity": 2}, headers=bearer(token))
            assert response.status_code == 503, response.text
            assert response.json() == {"detail": "Database unavailable; try again shortly",
                                       "request_id": response.headers["x-request-id"]}  # a 5xx names its request
            assert response.headers["retry-after"] == "1"
            assert (await client.post("/users/login", json={"username": "marko", "password": "password123"})
                    ).status_code == 503
            assert "farm" not in response.text and (await client.get("/health")).status_code == 200
        finally:
            pg_support.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

        async def recovered(client: Client = client, token: str = token) -> bool:
            r = await client.put("/cart/items/1", json={"quantity": 2}, headers=bearer(token))
            return r.status_code == 200

        await until(recovered)
        assert (await client.get("/cart", headers=bearer(token))).json() == {"items": [{"item_id": 1, "quantity": 2}]}


async def test_revoked_tokens_are_refused_without_asking_the_database(tmp_path: Path, databases: Databases) -> None:
    """Once a process has found a session or visitor missing, it answers 401 for it from memory
    (their ids are never reused): replaying a revoked token costs no query, and still gets 401
    while the database refuses connections, when a live token gets 503."""
    url = databases.url_for(tmp_path)
    name = url.rsplit("/", 1)[1]
    async for client in running(make_settings(tmp_path, database_url=url)):
        live, revoked = await client.token_for("marko"), await client.token_for("marko")
        assert (await client.post("/users/logout", headers=bearer(revoked))).status_code == 204
        visitor = await client.anonymous()
        assert (await client.register("ana", token=visitor)).status_code == 201  # the visitor becomes ana
        for token in (revoked, visitor):
            assert (await client.get("/cart", headers=bearer(token))).status_code == 401  # found missing
        pg_support.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            pg_support.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            assert (await client.get("/cart", headers=bearer(live))).status_code == 503  # the database is away
            for token in (revoked, visitor):
                response = await client.get("/cart", headers=bearer(token))
                assert response.status_code == 401 and response.json() == {"detail": "Invalid token"}, response.text
        finally:
            pg_support.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


async def test_a_database_at_an_unknown_newer_revision_refuses_to_start(tmp_path: Path, databases: Databases) -> None:
    url = databases.url_for(tmp_path)
    pg_support.psql("UPDATE alembic_version SET version_num = '9999_from_the_future'", url)
    with pytest.raises(StoreError) as refused:
        async for _ in running(make_settings(tmp_path, database_url=url)):
            pass
    message = str(refused.value)
    assert "9999_from_the_future" in message and "newer version" in message
    assert ":***@" in message and ":farm@" not in message


async def test_an_unreachable_database_is_waited_for_then_named_without_its_password() -> None:
    url = f"postgresql://farm:sekrit-pw@127.0.0.1:{pg_support.free_port()}/nowhere"
    store = PostgresStore(url, 2, startup_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreError) as refused:
        await store.open()
    assert time.monotonic() - started < 10  # bounded (waits 0.5 s, plus one connect attempt)
    message = str(refused.value)
    assert "postgresql://farm:***@127.0.0.1:" in message and "sekrit-pw" not in message


async def test_concurrent_refreshes_of_one_token_rotate_once(tmp_path: Path, databases: Databases) -> None:
    """Compare-and-set on the current jti: one rotation; the others (within the grace period)
    get the session's current refresh token; none starts a second chain."""
    async for client in running(make_settings(tmp_path, database_url=databases.url_for(tmp_path))):
        refresh = (await client.session_for("marko"))["refresh_token"]
        answers = await asyncio.gather(*(client.post("/users/refresh", json={"refresh_token": refresh})
                                         for _ in range(10)))
        assert [r.status_code for r in answers] == [200] * 10
        jtis = {jwt.decode(r.json()["refresh_token"], options={"verify_signature": False})["jti"] for r in answers}
        assert len(jtis) == 1  # (the tokens themselves may differ in their issue time)


def head_revision() -> str:
    """The newest revision in migrations/versions/ (what a migrated database is at)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config(str(pg_support.ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(pg_support.ROOT / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


async def test_the_service_migrates_an_empty_database(tmp_path: Path, databases: Databases) -> None:
    url = databases.unmigrated()
    async for client in running(make_settings(tmp_path, database_url=url)):
        assert (await client.register("marko")).status_code == 201
    assert pg_support.psql("SELECT version_num FROM alembic_version", url) == head_revision()


def test_start_up_migrations_of_several_hosts_do_not_race(databases: Databases) -> None:
    """Four processes migrating one empty database at once: the advisory lock makes one of them
    create the schema and the others find it done."""
    import subprocess
    import sys

    url = databases.unmigrated()
    runs = [subprocess.Popen([sys.executable, "-m", "store.pg_tools", "migrate", "--database-url", url],
                             cwd=pg_support.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    assert pg_support.psql("SELECT version_num FROM alembic_version", url) == head_revision()



async def test_views_noted_by_another_process_follow_the_visitor_into_the_account(tmp_path: Path,
                                                                                databases: Databases) -> None:
    """As tests/test_personalisation.py's JSON version: two stores on one database, as two workers."""
    url = databases.url_for(tmp_path)
    first, second = PostgresStore(url, 2), PostgresStore(url, 2)
    await first.open()
    await second.open()
    try:
        visitor = await first.add_anonymous("client", 0)
        await first.record_view(visitor, 3)
        await second.record_view(visitor, 2)
        await second.add_favourite(visitor, 7)
        await second.set_cart_item(visitor, 1, 2)
        user = await second.add_user("marko", "not-a-hash", merge_from=visitor)
        assert [item for item, _ in await second.get_history(user.id)] == [2]
        assert await first.flush_views() == 1
        assert [item for item, _ in await second.get_history(user.id)] == [2, 3]  # by time
        assert await first.get_favourites(user.id) == [7] and await first.get_cart(user.id) == {1: 2}
        assert not await first.anonymous_exists(visitor)
        assert await second.delete_user(user.id)
        await first.record_view(visitor, 4)
        assert await first.flush_views() == 0  # the account is gone: so are the visitor's late views
    finally:
        for store in (first, second):
            await store.close()
