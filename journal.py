"""Durable tables in one JSON file, shared safely by several worker processes.

Files, for a store at ``users.json``:

- ``users.json``: the snapshot, ``{"users": [...], "<table>": {key: value}, ...}``. ``users`` is a
  list, as in the book, so a file the book's example wrote loads unchanged and people can read it.
- ``users.json.journal``: changes made since the snapshot, one JSON line per transaction:
  ``[["table", "key", value], ...]`` (``null`` deletes). A write appends to it instead of
  rewriting the whole snapshot, so its cost does not grow with the store; a line is all of a
  transaction or, torn by a crash, none of it.
- ``users.json.lock``: writers hold an ``flock`` on it; its first 8 bytes, shared through ``mmap``,
  are the commit position (``epoch << 40 | committed journal length``). Reading them costs
  nanoseconds, so every request can check whether another worker has written.

Writes are group commits: callers queue transactions; one flusher takes all that are queued, locks,
catches up with the other workers' commits, runs each transaction against that state (so a
uniqueness check sees every worker's data), appends the changes with one ``write``, ``fsync``\\ s,
publishes the new position and only then answers the callers. Bytes past the published position
are a torn or unacknowledged tail and are cut off by the next writer, so a ``kill -9`` at any
instant loses nothing that was acknowledged.

When the journal outgrows the snapshot (so the cost stays amortised O(1) per write) and on a clean
stop, the state is folded into a new snapshot (temp file, ``fsync``, ``os.replace``, directory
``fsync``), the journal is removed and the epoch bumped; other workers then reload. Records hold
whole values, so replaying a journal over a snapshot that already contains it (a crash between
the rename and the removal) changes nothing; indexes are rebuilt from the final state. A snapshot
or journal that cannot be read stops the service with a message naming the file; it is never
overwritten.
"""

import asyncio
import fcntl
import json
import mmap
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import metrics

Change = tuple[str, str, Any]  # (table, key, value or None to delete)
Transaction = Callable[[], tuple[Any, list[Change]]]

_POS = struct.Struct("<Q")
_LEN_BITS = 40
_LEN_MASK = (1 << _LEN_BITS) - 1
COMPACT_MIN_BYTES = 4 << 20


class StoreError(RuntimeError):
    """The store's files cannot be used; the message names the file and the problem."""


def _encode(changes: list[Change]) -> bytes:
    return (json.dumps(changes, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournaledTables:
    """Tables of JSON documents (``tables[name][key]``), durable and shared across processes.

    ``on_change(table, key, old, new)`` keeps the caller's indexes in step (it may raise
    ``ValueError`` for data that breaks them); ``on_reset()`` precedes a rebuild of them after a
    full (re)load. Reads use ``tables`` directly after ``refresh()``.
    """

    def __init__(
        self,
        path: Path,
        names: Iterable[str],
        on_change: Callable[[str, str, Any, Any], None],
        on_reset: Callable[[], None],
        list_key: Callable[[dict[str, Any]], str],
        list_tables: Iterable[str] = ("users",),
    ) -> None:
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.names = tuple(names)
        self.list_tables = set(list_tables)
        self.tables: dict[str, dict[str, Any]] = {name: {} for name in self.names}
        self._on_change = on_change
        self._on_reset = on_reset
        self._list_key = list_key
        self._pos = 0  # the commit position this process has applied
        self._journal_fd: int | None = None
        self._snapshot_size = 0
        self._pending: list[tuple[Transaction, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    # -- opening and closing (blocking; called from the lifespan) -------------------------------

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._lock_fd).st_size < _POS.size:  # a new lock file: position 0
                os.pwrite(self._lock_fd, bytes(_POS.size), 0)
            self._shared = mmap.mmap(self._lock_fd, _POS.size)
            if not self.path.exists():
                self._write_snapshot()
                _fsync_dir(self.path.parent)
            epoch = self._published() >> _LEN_BITS
            self._load(recover=True)
            self._publish(epoch, self._journal_len())
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def drain(self) -> None:
        """Refuse new transactions and wait for the queued ones (before ``close``)."""
        self._closing = True
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    def close(self) -> None:
        """Fold the journal into the snapshot, so that a stopped service is ``users.json`` alone."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            if self._journal_len() or self.journal_path.exists():  # an empty one goes too, via a new epoch
                self._fold()
                self._after_fold()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            self._shared.close()
            os.close(self._lock_fd)

    # -- reading -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Apply other workers' commits; costs one 8-byte read when there are none."""
        if _POS.unpack_from(self._shared)[0] != self._pos:
            self._catch_up()

    def _published(self) -> int:
        return _POS.unpack_from(self._shared)[0]

    def _publish(self, epoch: int, length: int) -> None:
        self._pos = (epoch << _LEN_BITS) | length
        _POS.pack_into(self._shared, 0, self._pos)

    def _journal_len(self) -> int:
        return self._pos & _LEN_MASK

    def _catch_up(self) -> None:
        target = self._published()
        if target == self._pos:
            return
        if target >> _LEN_BITS != self._pos >> _LEN_BITS:
            self._load(recover=False)  # another worker compacted: start from its snapshot
            return
        start, end = self._journal_len(), target & _LEN_MASK
        try:
            data = os.pread(self._open_journal(create=False), end - start, start) if end > start else b""
        except FileNotFoundError:
            data = b""
        if len(data) < end - start or self._published() >> _LEN_BITS != target >> _LEN_BITS:
            self._load(recover=False)  # compacted while we read: what we read may be another journal
            return
        changes, _ = self._parse(data, start, recover=False)
        try:
            for change in changes:
                self._apply(*change)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.journal_path}: a record breaks the store ({exc})") from exc
        self._pos = target

    def _load(self, recover: bool) -> None:
        """Load snapshot + journal. ``recover`` (under the lock) cuts a torn tail; otherwise the
        read is validated against the published position and retried if a compaction raced it."""
        while True:
            before = self._published()
            self.tables = {name: {} for name in self.names}
            self._read_snapshot()
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            data = self._read_journal()
            if recover:
                changes, valid = self._parse(data, 0, recover=True)
                if valid < len(data):  # a torn tail: never acknowledged
                    os.ftruncate(self._open_journal(), valid)
                    os.fsync(self._open_journal())
                self._pos = ((before >> _LEN_BITS) << _LEN_BITS) | valid
            else:
                length = before & _LEN_MASK
                if len(data) < length or self._published() >> _LEN_BITS != before >> _LEN_BITS:
                    continue  # a compaction ran while we read; read again
                changes, _ = self._parse(data[:length], 0, recover=False)
                self._pos = before
            for table, key, value in changes:
                if value is None:
                    self.tables[table].pop(key, None)
                else:
                    self.tables[table][key] = value
            self._reindex()
            if not recover:
                self._catch_up()
            return

    def _reindex(self) -> None:
        self._on_reset()
        for name, rows in self.tables.items():
            for key, value in rows.items():
                try:
                    self._on_change(name, key, None, value)
                except (KeyError, TypeError, ValueError) as exc:
                    raise StoreError(f"{self.path}: bad entry in \"{name}\": {exc}") from exc

    def _read_snapshot(self) -> None:
        try:
            raw = self.path.read_bytes()
            doc = json.loads(raw)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the user store ({exc.strerror})") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.path}: the user store is not valid JSON ({exc}); "
                             "fix or move the file, it is left untouched") from exc
        if not isinstance(doc, dict):
            raise StoreError(f"{self.path}: expected a JSON object like {{\"users\": [...]}}")
        self._snapshot_size = len(raw)
        for name in self.names:
            value = doc.get(name, [] if name in self.list_tables else {})
            if name in self.list_tables:
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    raise StoreError(f"{self.path}: \"{name}\" must be a list of objects")
                try:
                    self.tables[name] = {self._list_key(v): v for v in value}
                except (KeyError, TypeError, ValueError) as exc:
                    raise StoreError(f"{self.path}: bad entry in \"{name}\": missing {exc}") from exc
                if len(self.tables[name]) != len(value):
                    raise StoreError(f"{self.path}: duplicate ids in \"{name}\"")
            elif isinstance(value, dict):
                self.tables[name] = value
            else:
                raise StoreError(f"{self.path}: \"{name}\" must be an object")

    def _read_journal(self) -> bytes:
        try:
            fd = self._open_journal(create=False)
        except FileNotFoundError:
            return b""
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)

    def _parse(self, data: bytes, offset: int, recover: bool) -> tuple[list[Change], int]:
        """The changes in ``data`` and the length of its valid part. With ``recover``, whatever
        follows the last readable line (a torn or zero-filled tail after a crash) is not valid;
        an unreadable line with readable ones after it is corruption, always."""
        lines = data.split(b"\n")
        if lines[-1] and not recover:
            raise StoreError(f"{self.journal_path}: journal ends mid-record at byte {offset + len(data)}")
        changes: list[Change] = []
        pos = 0
        for i, line in enumerate(lines[:-1]):
            try:
                changes += self._decode(line)
            except (ValueError, TypeError) as exc:
                if recover and not any(self._decodes(rest) for rest in lines[i + 1:-1]):
                    break
                raise StoreError(f"{self.journal_path}: corrupt record at byte {offset + pos}; "
                                 "fix or move the file, it is left untouched") from exc
            pos += len(line) + 1
        return changes, pos

    def _decode(self, line: bytes) -> list[Change]:
        changes = json.loads(line)
        if not isinstance(changes, list):
            raise TypeError("not a list of changes")
        for table, key, _ in changes:
            if table not in self.tables or not isinstance(key, str):
                raise ValueError("unknown table or key")
        return [tuple(change) for change in changes]  # type: ignore[misc]

    def _decodes(self, line: bytes) -> bool:
        try:
            self._decode(line)
        except (ValueError, TypeError):
            return False
        return True

    def _apply(self, table: str, key: str, value: Any) -> None:
        rows = self.tables[table]
        old = rows.get(key)
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value
        self._on_change(table, key, old, value)

    # -- writing -------------------------------------------------------------------------------

    async def transact(self, transaction: Transaction) -> Any:
        """Run ``transaction`` under the cross-process lock; return its result once durable.

        The transaction reads ``tables`` and returns ``(result, changes)``; an exception it raises
        reaches the caller and changes nothing.
        """
        if self._closing:
            raise RuntimeError("the store is closing")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((transaction, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        started = time.perf_counter()
        result = await future
        metrics.commit_took(started)  # queued, written and fsync'd: the caller's wait
        return result

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._commit(batch)
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._flusher = None

    async def _commit(self, batch: list[tuple[Transaction, asyncio.Future[Any]]]) -> None:
        await asyncio.to_thread(fcntl.flock, self._lock_fd, fcntl.LOCK_EX)
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            self._catch_up()
            lines: list[bytes] = []
            for transaction, future in batch:
                try:
                    result, changes = transaction()
                except Exception as exc:  # noqa: BLE001 -- the caller's error (e.g. username taken) goes to the caller
                    outcomes.append((future, None, exc))
                    continue
                for change in changes:
                    self._apply(*change)
                if changes:
                    lines.append(_encode(changes))
                outcomes.append((future, result, None))
            if lines:
                fd = self._open_journal()
                if os.fstat(fd).st_size != self._journal_len():
                    os.ftruncate(fd, self._journal_len())  # a crashed writer's unacknowledged tail
                data = b"".join(lines)
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], self._journal_len() + written)
                await asyncio.to_thread(os.fdatasync, fd)
                self._publish(self._pos >> _LEN_BITS, self._journal_len() + len(data))
        except BaseException:
            self._pos = -1  # memory may now differ from disk: reload before the next read
            raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if self._journal_len() > max(COMPACT_MIN_BYTES, self._snapshot_size):
            await self._compact()

    async def _compact(self) -> None:
        """Fold the journal into the snapshot once it has outgrown it: amortised O(1) per write."""
        await asyncio.to_thread(fcntl.flock, self._lock_fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            await asyncio.to_thread(self._fold)
            self._after_fold()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _open_journal(self, create: bool = True) -> int:
        if self._journal_fd is None:
            try:
                self._journal_fd = os.open(self.journal_path, os.O_RDWR)
            except FileNotFoundError:
                if not create:
                    raise
                self._journal_fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT, 0o600)
                _fsync_dir(self.path.parent)  # so the new file's name is durable too
        return self._journal_fd

    def _fold(self) -> None:
        """Write the state as the snapshot and drop the journal. Caller holds the lock, so no
        change can arrive meanwhile; safe in a worker thread (it publishes nothing)."""
        self._write_snapshot()
        self.journal_path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)

    def _after_fold(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        self._publish(((self._pos >> _LEN_BITS) + 1) & 0xFFFFFF, 0)

    def _write_snapshot(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        size = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for chunk in self._snapshot_chunks():
                    size += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._snapshot_size = size

    def _snapshot_chunks(self) -> Iterable[str]:
        """Serialise a document at a time, so a large snapshot does not hold the GIL for long."""
        dump = json.dumps
        yield "{"
        for n, name in enumerate(self.names):
            rows = self.tables[name]
            yield ("," if n else "") + "\n  " + dump(name) + (": [" if name in self.list_tables else ": {")
            for i, (key, value) in enumerate(list(rows.items())):
                sep = "," if i else ""
                if name in self.list_tables:
                    yield f"{sep}\n    {dump(value, ensure_ascii=False)}"
                else:
                    yield f"{sep}\n    {dump(key, ensure_ascii=False)}: {dump(value, ensure_ascii=False)}"
            yield "\n  ]" if name in self.list_tables else "\n  }"
        yield "\n}\n"
