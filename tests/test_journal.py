"""The store engine with real files: two ``JsonStore`` instances on one file behave like two
workers (separate descriptors, so ``flock`` really excludes them), without starting processes."""

import asyncio
import json
import os
from pathlib import Path

import pytest

import journal
from store import JsonStore, StoreError, UsernameTaken

pytestmark = pytest.mark.anyio
HASH = "$2b$04$" + "a" * 53


async def opened(path: Path) -> JsonStore:
    store = JsonStore(path)
    await store.open()
    return store


async def test_a_write_in_one_worker_is_seen_by_the_other(tmp_path: Path) -> None:
    first, second = await opened(tmp_path / "users.json"), await opened(tmp_path / "users.json")
    user = await first.add_user("marko", HASH)
    assert await second.get_user(user.id) == user
    with pytest.raises(UsernameTaken):
        await second.add_user("MARKO", HASH)


async def test_concurrent_writers_have_one_winner_per_name(tmp_path: Path) -> None:
    stores = [await opened(tmp_path / "users.json") for _ in range(3)]
    results = await asyncio.gather(*(s.add_user("same", HASH) for s in stores for _ in range(5)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, UsernameTaken) for r in results if isinstance(r, Exception))


async def test_compaction_folds_the_journal_and_other_workers_reload(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 2000)
    path = tmp_path / "users.json"
    writer, reader = await opened(path), await opened(path)
    await asyncio.gather(*(writer.add_user(f"user{i}", HASH) for i in range(40)))
    await writer.add_user("last", HASH)  # the first batch outgrew 2000 bytes: folded after it
    snapshot = json.loads(path.read_text())
    assert len(snapshot["users"]) >= 40
    assert len(await reader.list_users(1000)) == 41
    await reader.add_user("from-reader", HASH)
    assert await writer.find_user("from-reader") is not None


async def test_clean_close_leaves_users_json_alone(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store = await opened(path)
    await store.add_user("marko", HASH)
    await store.close()
    assert not (tmp_path / "users.json.journal").exists()
    assert [u["username"] for u in json.loads(path.read_text())["users"]] == ["marko"]


async def test_a_torn_last_record_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store = await opened(path)
    await store.add_user("kept", HASH)
    journal_path = tmp_path / "users.json.journal"
    with open(journal_path, "ab") as f:
        f.write(b'[["users","x",{"id":"x","usern')  # a crash mid-write
    reopened = await opened(path)
    assert await reopened.find_user("kept") is not None
    assert journal_path.read_bytes().endswith(b"\n")
    await reopened.add_user("after", HASH)
    assert await (await opened(path)).find_user("after") is not None


async def test_an_unpublished_tail_is_cut_by_the_next_writer(tmp_path: Path) -> None:
    """Bytes past the published position were never acknowledged: the next writer drops them."""
    path = tmp_path / "users.json"
    first, second = await opened(path), await opened(path)
    await first.add_user("one", HASH)
    with open(tmp_path / "users.json.journal", "ab") as f:
        f.write(b'[["users","ghost",{"id":"ghost","username":"ghost","password":"x"}]]\n[["us')
    await second.add_user("two", HASH)
    assert await (await opened(path)).find_user("ghost") is None
    assert {u.username for u in await (await opened(path)).list_users(1000)} == {"one", "two"}


@pytest.mark.parametrize("content", [b'{"users": [', b"[]", b'{"users": {}}', b'{"users": [{"id": 1}]}',
                                     (b'{"users": [{"id": 1, "username": "a", "password": "x"},'
                                      b' {"id": 2, "username": "A", "password": "y"}]}'), b"\xff\xfe"])
async def test_a_broken_snapshot_is_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "users.json"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=str(path)):
        await opened(path)
    assert path.read_bytes() == content


async def test_a_corrupt_journal_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    await (await opened(path)).close()
    journal_path = tmp_path / "users.json.journal"
    content = b'garbage\n[["users","1",{"id":"1","username":"a","password":"x"}]]\n'
    journal_path.write_bytes(content)
    with pytest.raises(StoreError, match="journal"):
        await opened(path)
    assert journal_path.read_bytes() == content


async def test_an_unreadable_store_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        path = tmp_path / "users.json"
        path.mkdir()  # root reads any file; a directory in its place is unreadable as a file
    else:
        path = tmp_path / "users.json"
        path.write_text('{"users": []}')
        path.chmod(0)
    with pytest.raises(StoreError, match=str(path)):
        await opened(path)


async def test_the_books_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    content = json.dumps({"users": [{"id": 1, "username": "marko", "password": HASH},
                                    {"username": "ana", "password": HASH}]})
    path.write_text(content)
    store = await opened(path)
    assert (await store.find_user("marko")).id == "1"
    ana = await store.find_user("ana")  # the book's entries may lack an id: a stable one is derived
    assert ana is not None and ana.id == (await (await opened(path)).find_user("ana")).id
    assert path.read_text() == content


async def test_a_crash_between_snapshot_and_journal_removal_replays_harmlessly(tmp_path: Path) -> None:
    """The journal is replayed over a snapshot that already holds it: same final state, even when
    a name was freed and taken again in between (an index check per record would refuse it)."""
    path = tmp_path / "users.json"
    store = await opened(path)
    first = await store.add_user("marko", HASH)
    await store.delete_user(first.id)
    second = await store.add_user("marko", HASH)
    store._db._write_snapshot()  # the fold's first half; the "crash" leaves the journal behind
    assert (tmp_path / "users.json.journal").exists()
    reopened = await opened(path)
    assert [u.id for u in await reopened.list_users(1000)] == [second.id]


async def test_a_torn_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store = await opened(path)
    visitor = await store.add_anonymous("client", 0)
    await store.set_cart_item(visitor, 1, 3)
    user = await store.add_user("ana", HASH, merge_from=visitor)
    journal_path = tmp_path / "users.json.journal"
    data = journal_path.read_bytes()
    journal_path.write_bytes(data[:-20])  # the last transaction (register + merge) lost its end
    reopened = await opened(path)
    assert await reopened.get_user(user.id) is None
    assert await reopened.anonymous_exists(visitor)
    assert await reopened.get_cart(visitor) == {1: 3}


async def test_a_zero_filled_tail_is_a_crash_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store = await opened(path)
    await store.add_user("kept", HASH)
    with open(tmp_path / "users.json.journal", "ab") as f:
        f.write(bytes(4096) + b"\n")  # what a power loss can leave in a page that was not written
    assert await (await opened(path)).find_user("kept") is not None


async def test_close_waits_for_queued_writes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 1)  # every commit compacts: the racy case
    path = tmp_path / "users.json"
    store = await opened(path)
    writes = [asyncio.ensure_future(store.add_user(f"user{i}", HASH)) for i in range(30)]
    await asyncio.sleep(0)
    await store.close()
    assert all(w.done() and not w.exception() for w in writes)
    assert len(json.loads(path.read_text())["users"]) == 30
    assert not (tmp_path / "users.json.journal").exists()
    with pytest.raises(RuntimeError):
        await store.add_user("late", HASH)


async def test_no_cart_for_an_owner_that_is_gone(tmp_path: Path) -> None:
    from store import UnknownOwner

    store = await opened(tmp_path / "users.json")
    visitor = await store.add_anonymous("client", 0)
    await store.add_user("ana", HASH, merge_from=visitor)  # the visitor is upgraded
    with pytest.raises(UnknownOwner):
        await store.set_cart_item(visitor, 1, 1)
    assert await store.get_cart(visitor) == {}


async def test_a_store_that_saw_no_change_stops_as_users_json_alone(tmp_path: Path) -> None:
    store = await opened(tmp_path / "users.json")
    await store.prune()  # a transaction with nothing to change
    await store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".lock", ".secret"))) == ["users.json"]
