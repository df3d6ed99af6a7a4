"""``JsonStore``'s audit log: a directory beside the store (``users.json.audit/``) holding one
append-only JSON-lines file per UTC day (``2026-12-03.jsonl``), an event a line.

Why files of their own rather than the journal: an audit event is written without an ``fsync``
(audit.py batches a worker's events and calls ``record_audit`` about once a second), and must not
slow the journal's group commit. Each batch is one ``write`` on a descriptor opened with
``O_APPEND``, so the batches of several workers never interleave. An event acknowledged with its
request is in memory until the next flush (about a second), then in the operating system's page
cache: a ``kill -9`` loses at most the unflushed second, like the browsing history; a power cut
may lose what the kernel had not yet written back (typically up to half a minute). A line cut
short by a crash is skipped when read.

Retention drops whole days: ``prune_audit`` deletes the files of days before its bound's day.
Reads parse each day's file once and then only what was appended since (kept in memory per file).
"""

import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .records import AuditEvent

SUFFIX = ".jsonl"


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _event(doc: dict[str, Any]) -> AuditEvent | None:
    try:
        return AuditEvent(str(doc["id"]), float(doc["at"]), str(doc["type"]), doc.get("user_id"), doc.get("username"),
                          doc.get("client"), doc.get("user_agent"), dict(doc.get("detail") or {}))
    except (KeyError, TypeError, ValueError):
        return None


def id_time(event_id: str) -> float:
    """When the event with this id happened (audit.event_id: microseconds in the first 16 hex digits)."""
    try:
        return int(event_id[:16], 16) / 1_000_000
    except ValueError:
        return float("inf")


class JsonAudit:
    _audit_dir: Path

    def _init_audit(self, store_path: Path) -> None:
        self._audit_dir = Path(store_path).with_name(Path(store_path).name + ".audit")
        self._audit_read: dict[str, tuple[int, list[AuditEvent]]] = {}  # file -> (bytes parsed, its events)

    async def record_audit(self, events: list[AuditEvent]) -> None:
        if events:
            await asyncio.to_thread(self._append_audit, events)

    def _append_audit(self, events: list[AuditEvent]) -> None:
        by_day: dict[str, list[str]] = {}
        for event in events:
            by_day.setdefault(_day(event.at), []).append(json.dumps(asdict(event), separators=(",", ":")) + "\n")
        self._audit_dir.mkdir(mode=0o700, exist_ok=True)
        for day, lines in by_day.items():
            data = "".join(lines).encode()
            fd = os.open(self._audit_dir / (day + SUFFIX), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:  # one write in practice; a short write (a full disk) continues where it stopped
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def _audit_days(self) -> list[str]:
        try:
            return sorted((p.name for p in self._audit_dir.iterdir() if p.name.endswith(SUFFIX)), reverse=True)
        except FileNotFoundError:
            return []

    def _read_day(self, name: str) -> list[AuditEvent]:
        """The events of one day's file, parsing only what was appended since the last read."""
        parsed, events = self._audit_read.get(name, (0, []))
        try:
            with open(self._audit_dir / name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < parsed:  # replaced (restored from a backup): start over
                    parsed, events = 0, []
                if size == parsed:
                    return events
                f.seek(parsed)
                data = f.read(size - parsed)
        except FileNotFoundError:
            self._audit_read.pop(name, None)
            return []
        complete = data.rfind(b"\n") + 1  # a line still being written (or cut by a crash) waits
        events = list(events)
        for line in data[:complete].splitlines():
            try:
                event = _event(json.loads(line))
            except ValueError:
                event = None
            if event is not None:
                events.append(event)
        self._audit_read[name] = (parsed + complete, events)
        return events

    async def list_audit(self, limit: int, before: str | None = None, user_id: str | None = None,
                         type: str | None = None) -> list[AuditEvent]:
        return await asyncio.to_thread(self._list_audit, limit, before, user_id, type)

    def _list_audit(self, limit: int, before: str | None, user_id: str | None, type: str | None) -> list[AuditEvent]:
        last_day = _day(id_time(before)) + SUFFIX if before is not None else None
        found: list[AuditEvent] = []
        for name in self._audit_days():  # newest day first; every event is in its own day's file
            if last_day is not None and name > last_day:
                continue
            found += [e for e in self._read_day(name) if (before is None or e.id < before)
                      and (user_id is None or e.user_id == user_id) and (type is None or e.type == type)]
            if len(found) >= limit:
                break
        found.sort(key=lambda e: e.id, reverse=True)
        return found[:limit]

    async def prune_audit(self, before: float) -> int:
        return await asyncio.to_thread(self._prune_audit, before)

    def _prune_audit(self, before: float) -> int:
        dropped = 0
        for name in self._audit_days():
            if name < _day(before) + SUFFIX:
                try:
                    dropped += (self._audit_dir / name).read_bytes().count(b"\n")
                    (self._audit_dir / name).unlink()
                except FileNotFoundError:
                    pass
                self._audit_read.pop(name, None)
        return dropped
