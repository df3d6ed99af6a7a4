"""``PostgresStore``'s audit log: the ``audit_events`` table (migration 0004), a mixin on ``PgBase``.

audit.py hands each worker's events over in batches about once a second: one multi-row INSERT
per batch (``unnest``), committed without waiting on anything else, so the log adds no round trip
to a request. Events survive a ``kill -9`` of the app once their batch is committed (up to about
a second is lost, as with the browsing history); the database's own durability does the rest.
"""

import json
from typing import Any

from .pg_base import PgBase, _Tx
from .records import AuditEvent

COLUMNS = "id, at, type, user_id, username, client, user_agent, detail"


def _event(row: Any) -> AuditEvent:
    detail = row["detail"]
    return AuditEvent(row["id"], row["at"], row["type"], row["user_id"], row["username"], row["client"],
                      row["user_agent"], detail if isinstance(detail, dict) else json.loads(detail or "{}"))


def _text(value: str | None) -> str | None:
    return value.replace("\0", "") if value is not None else None  # PostgreSQL text holds no NUL


class PgAudit(PgBase):
    async def record_audit(self, events: list[AuditEvent]) -> None:
        if not events:
            return

        async def tx(t: _Tx) -> None:
            await t.conn.execute(
                f"INSERT INTO audit_events ({COLUMNS}) SELECT * FROM unnest($1::text[], $2::float8[], $3::text[], "
                "$4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[]) ON CONFLICT (id) DO NOTHING",
                [e.id for e in events], [e.at for e in events], [e.type for e in events],
                [_text(e.user_id) for e in events], [_text(e.username) for e in events],
                [_text(e.client) for e in events], [_text(e.user_agent) for e in events],
                [e.detail for e in events])

        await self._transact(tx)

    async def list_audit(self, limit: int, before: str | None = None, user_id: str | None = None,
                         type: str | None = None) -> list[AuditEvent]:
        rows = await self._read(lambda c: c.fetch(
            f"SELECT {COLUMNS} FROM audit_events WHERE ($1::text IS NULL OR id < $1) "
            "AND ($2::text IS NULL OR user_id = $2) AND ($3::text IS NULL OR type = $3) ORDER BY id DESC LIMIT $4",
            _text(before), _text(user_id), _text(type), limit))
        return [_event(r) for r in rows]

    async def prune_audit(self, before: float) -> int:
        async def tx(t: _Tx) -> int:
            status = await t.conn.execute("DELETE FROM audit_events WHERE at < $1", before)
            return int(status.split()[-1])

        return await self._transact(tx)
