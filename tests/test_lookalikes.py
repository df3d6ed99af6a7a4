"""Look-alike usernames never coexist (issue #18), through HTTP on both backends.

Each pair of the issue (``paypal``/``раураӏ``, ``carol``/``сагоӏ``, ``ABC``/``АВС``, ``ooo``/``οοο``,
``admin``/``admın``, ``admin``/``ADMİN``), registered in either order or at once, leaves exactly
one account: a second Latin name gets ``409 Username already taken``; a name written wholly in
another script that passes for a Latin one gets a ``422`` saying so, whether or not the Latin name
is taken. Names that only share a script or a prefix still register; accounts that collided before
the rule (a users.json written by hand, an import, a database migrated from before it) keep
logging in, and a deleted account frees its name's look-alikes. Plus the key function itself.
"""

import asyncio
import os
import string
import subprocess
import sys
from pathlib import Path

import pg_support
import pytest
from passlib.context import CryptContext

from conftest import Client, Databases, bearer, make_settings, running, seed_store
from usernames import _keys, imitated_latin, lookalike_keys

pytestmark = pytest.mark.anyio

PAIRS = [("paypal", "раураӏ"), ("carol", "сагоӏ"), ("ABC", "АВС"), ("ooo", "οοο"), ("admin", "admın"),
         ("admin", "ADMİN")]
IMITATIONS = {"раураӏ": ("Cyrillic", "paypal"), "сагоӏ": ("Cyrillic", "carol"), "АВС": ("Cyrillic", "ABC"),
              "οοο": ("Greek", "ooo")}  # wholly another script, a plain-ASCII skeleton: refused on their own
TAKEN = {"detail": "Username already taken"}


def hashed(password: str = "password123") -> str:
    return CryptContext(schemes=["bcrypt"], bcrypt__rounds=4).hash(password)


async def accounts(client: Client, names: tuple[str, ...]) -> list[str]:
    """Every account's username, as ``/users/list`` shows it to each of ``names`` that logs in."""
    listings = []
    for name in names:
        response = await client.login(name)
        if response.status_code == 200:
            listed = await client.get("/users/list", headers=bearer(response.json()["token"]))
            listings.append(sorted(u["username"] for u in listed.json()["users"]))
        else:
            assert response.status_code == 401, response.text
    assert listings and all(listing == listings[0] for listing in listings)
    return listings[0]


def upgrade(url: str, revision: str) -> None:
    """``alembic upgrade`` to ``revision``, as an operator would run it."""
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", revision], cwd=pg_support.ROOT,
                   env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=120, check=True)


# -- the key function ---------------------------------------------------------------------------


@pytest.mark.parametrize(("latin", "other"), PAIRS)
def test_each_pair_of_the_issue_shares_a_key(latin: str, other: str) -> None:
    assert lookalike_keys(latin) & lookalike_keys(other)


@pytest.mark.parametrize(("a", "b"), [("paypal", "paypals"), ("ivan", "иван"), ("zoe", "ζωη"), ("ABC", "авс_1"),
                                      ("ΑΘΗΝΑ", "aohna"), ("carol", "caroi")])
def test_names_that_only_share_a_script_or_a_prefix_share_no_key(a: str, b: str) -> None:
    assert not lookalike_keys(a) & lookalike_keys(b)


def test_case_width_and_accents_do_not_make_a_name_new() -> None:
    assert lookalike_keys("Marko") & lookalike_keys("marko") & lookalike_keys("ｍａｒｋｏ")
    assert lookalike_keys("josé") & lookalike_keys("jose")
    assert lookalike_keys("ВОВ") & lookalike_keys("bob")  # looks like BOB, the same account as bob
    assert lookalike_keys("user0") & lookalike_keys("userO")  # the skeleton of 0 is O, the same account as o


@pytest.mark.parametrize("name", ["marko", "Marko_1", "user0", "ADMIN", "a.b-c", "m1Il0O|", "rnm", "x" * 15])
def test_the_fast_path_for_plain_names_gives_icus_keys(name: str) -> None:
    assert lookalike_keys(name) == _keys(name)


def test_the_fast_path_gives_icus_keys_for_every_plain_pair() -> None:
    plain = string.ascii_letters + string.digits + "_.-"
    for name in (a + b for a in plain for b in plain):
        assert lookalike_keys(name) == _keys(name), name


def test_only_names_wholly_in_another_script_with_an_ascii_skeleton_imitate_latin() -> None:
    for name, (_, latin) in IMITATIONS.items():
        assert imitated_latin(name) == latin
    for name in ("paypal", "admın", "ADMİN", "иван", "ζωη", "ΑΘΗΝΑ", "漢字かな", "123"):
        assert imitated_latin(name) is None, name


# -- registration, through HTTP -----------------------------------------------------------------


@pytest.mark.parametrize("latin_first", [True, False], ids=["latin-first", "latin-second"])
@pytest.mark.parametrize(("latin", "other"), PAIRS)
async def test_a_pair_in_either_order_leaves_one_account(client: Client, latin: str, other: str,
                                                          latin_first: bool) -> None:
    first, second = (latin, other) if latin_first else (other, latin)
    one, two = await client.register(first), await client.register(second)
    if other in IMITATIONS:  # refused on its own, whatever the order: the Latin name registers
        script, looks_like = IMITATIONS[other]
        refused, registered = (two, one) if latin_first else (one, two)
        assert registered.status_code == 201, registered.text
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", "username"]
        assert f"written in {script} but looks like the Latin name '{looks_like}'" in error["msg"]
        assert await accounts(client, (latin, other)) == [latin]
    else:  # both Latin: the first wins
        assert one.status_code == 201, one.text
        assert two.status_code == 409 and two.json() == TAKEN
        assert await accounts(client, (latin, other)) == [first]


async def test_names_that_only_share_a_script_or_a_prefix_register(client: Client) -> None:
    for name in ("ivan", "иван", "ζωη", "paypal", "paypals", "ΑΘΗΝΑ", "Ivan_2"):
        response = await client.register(name)
        assert response.status_code == 201, (name, response.text)
    assert len(await accounts(client, ("ivan", "иван", "ζωη", "paypal", "paypals", "ΑΘΗΝΑ", "Ivan_2"))) == 7


@pytest.mark.parametrize("names", [("admin", "admın"), ("admın", "ADMİN", "admin", "Admin", "ADMIN")])
async def test_concurrent_registrations_of_look_alikes_leave_one(client: Client, names: tuple[str, ...]) -> None:
    responses = await asyncio.gather(*(client.register(name) for name in names))
    assert sorted(r.status_code for r in responses) == [201] + [409] * (len(names) - 1), [r.text for r in responses]
    [winner] = [name for name, r in zip(names, responses, strict=True) if r.status_code == 201]
    assert await accounts(client, names) == [winner]


async def test_deleting_an_account_frees_its_look_alikes(client: Client) -> None:
    token = await client.token_for("admin")
    assert (await client.register("admın")).status_code == 409
    deleted = await client.request("DELETE", "/users/me", json={"password": "password123"}, headers=bearer(token))
    assert deleted.status_code == 204
    assert (await client.register("admın")).status_code == 201
    assert (await client.register("ADMİN")).status_code == 409


# -- accounts from before the rule -------------------------------------------------------------


async def test_accounts_that_already_look_alike_keep_working(tmp_path: Path) -> None:
    """A users.json written before the rule (on PostgreSQL: imported by ``import-json``)."""
    settings = make_settings(tmp_path)
    password = hashed()
    names = ("paypal", "раураӏ", "admin", "admın", "ADMİN")
    seed_store(settings, {"users": [{"id": f"u-{i}", "username": name, "password": password}
                                    for i, name in enumerate(names)]})
    async for client in running(settings):
        assert sorted(await accounts(client, names)) == sorted(names)
        for name in ("PayPal", "Admin", "admın"):  # a look-alike or the same name of any of them: taken
            assert (await client.register(name)).json() == TAKEN, name
        assert (await client.register("paypals")).status_code == 201


async def test_a_database_migrated_from_before_the_rule_keeps_its_look_alikes(
        tmp_path: Path, databases: Databases) -> None:
    """Migration 0003 backfills the keys of accounts already there, colliding ones included."""
    url = databases.unmigrated()
    upgrade(url, "0001")
    password = hashed()
    rows = ", ".join(f"('u-{i}', '{name}', '{name.casefold()}', '{password}')"
                     for i, name in enumerate(("carol", "сагоӏ", "ooo", "οοο")))
    pg_support.psql(f"INSERT INTO users (id, username, name_key, password) VALUES {rows}", url)
    async for client in running(make_settings(tmp_path, database_url=url)):  # migrates to the newest revision
        assert sorted(await accounts(client, ("carol", "сагоӏ", "ooo", "οοο"))) == ["carol", "ooo", "οοο", "сагоӏ"]
        assert (await client.register("CAROL")).json() == TAKEN
        assert (await client.register("OOO")).json() == TAKEN
        assert (await client.register("ooo_2")).status_code == 201
