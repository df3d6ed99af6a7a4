"""``PostgresStore``'s passkeys and second factors (``protocol.FactorStore``) in SQL: a mixin on
``PgBase`` (pg_base.py), with the same semantics as ``json_factors``.

Every "once" is one statement that decides it, so two hosts cannot both win: a challenge or an
``mfa_token`` is taken with ``DELETE ... RETURNING``, a TOTP step is accepted by an upsert whose
``WHERE`` wants a later step, a recovery code is spent by deleting its row, and a passkey's
counter moves by an ``UPDATE`` that wants it to go forward. The tables (migration 0005) cascade
from ``users``: deleting the account deletes them. Ending other sessions sends the account's
``u:`` note, so every host drops its cached sessions of it.
"""

import time
from typing import Any

from .pg_base import PgBase, _Tx
from .records import Attempt, MfaTicket, Passkey, UnknownOwner, WebAuthnChallenge

PASSKEY_COLUMNS = "id, user_id, credential_id, public_key, sign_count, name, created_at, last_used_at, transports"


def _passkey(row: Any) -> Passkey:
    return Passkey(row["id"], row["user_id"], row["credential_id"], bytes(row["public_key"]), row["sign_count"],
                   row["name"], row["created_at"], row["last_used_at"], tuple(row["transports"]))


async def _end_other_sessions(t: _Tx, user_id: str, keep_session: str | None) -> None:
    await t.conn.execute("DELETE FROM sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2", user_id, keep_session)
    t.revoke("u:" + user_id)


class PgFactors(PgBase):
    # -- WebAuthn challenges ----------------------------------------------------------------------

    async def put_webauthn_challenge(self, challenge: str, purpose: str, user_id: str | None,
                                     expires_at: float) -> None:
        await self._transact(lambda t: t.conn.execute(
            "INSERT INTO webauthn_challenges (challenge, purpose, user_id, expires_at) VALUES ($1, $2, $3, $4)",
            challenge, purpose, user_id, expires_at))

    async def take_webauthn_challenge(self, challenge: str) -> WebAuthnChallenge | None:
        row = await self._transact(lambda t: t.conn.fetchrow(
            "DELETE FROM webauthn_challenges WHERE challenge = $1 RETURNING purpose, user_id, expires_at", challenge))
        if row is None or row["expires_at"] < time.time():
            return None
        return WebAuthnChallenge(row["purpose"], row["user_id"], row["expires_at"])

    # -- passkeys ---------------------------------------------------------------------------------

    async def add_passkey(self, passkey: Passkey, keep_session: str | None = None) -> bool:
        async def tx(t: _Tx) -> bool:
            if await t.conn.fetchval("SELECT id FROM users WHERE id = $1 FOR KEY SHARE", passkey.user_id) is None:
                raise UnknownOwner(passkey.user_id)
            added = await t.conn.fetchval(
                f"INSERT INTO passkeys ({PASSKEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (credential_id) DO NOTHING RETURNING true", passkey.id, passkey.user_id,
                passkey.credential_id, passkey.public_key, passkey.sign_count, passkey.name, passkey.created_at,
                passkey.last_used_at, list(passkey.transports))
            if not added:
                return False
            await _end_other_sessions(t, passkey.user_id, keep_session)
            return True

        return await self._transact(tx)

    async def list_passkeys(self, user_id: str) -> list[Passkey]:
        rows = await self._read(lambda c: c.fetch(
            f"SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, id", user_id))
        return [_passkey(r) for r in rows]

    async def find_passkey(self, credential_id: str) -> Passkey | None:
        if "\0" in credential_id:
            return None
        row = await self._read(lambda c: c.fetchrow(
            f"SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = $1", credential_id))
        return _passkey(row) if row else None

    async def use_passkey(self, passkey_id: str, sign_count: int, at: float) -> bool:
        return bool(await self._transact(lambda t: t.conn.fetchval(
            "UPDATE passkeys SET sign_count = $2, last_used_at = $3 WHERE id = $1 "
            "AND ($2 > sign_count OR ($2 = 0 AND sign_count = 0)) RETURNING true", passkey_id, sign_count, at)))

    async def remove_passkey(self, user_id: str, passkey_id: str, keep_session: str | None = None) -> bool:
        async def tx(t: _Tx) -> bool:
            if await t.conn.fetchval("DELETE FROM passkeys WHERE id = $1 AND user_id = $2 RETURNING true",
                                     passkey_id, user_id) is None:
                return False
            await _end_other_sessions(t, user_id, keep_session)
            return True

        return await self._transact(tx)

    async def end_other_sessions(self, user_id: str, keep_session: str | None) -> None:
        await self._transact(lambda t: _end_other_sessions(t, user_id, keep_session))

    # -- a login waiting for its second factor ----------------------------------------------------

    async def add_mfa_token(self, key: str, user_id: str, attempt: Attempt, attempts: int, expires_at: float) -> None:
        await self._transact(lambda t: t.conn.execute(
            "INSERT INTO mfa_tokens (key, user_id, attempts_left, expires_at, at, name_key, device) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", key, user_id, attempts, expires_at, attempt.at, attempt.name_key,
            attempt.device))

    async def try_mfa_token(self, key: str) -> MfaTicket | None:
        async def tx(t: _Tx) -> MfaTicket | None:
            row = await t.conn.fetchrow(
                "UPDATE mfa_tokens SET attempts_left = attempts_left - 1 WHERE key = $1 AND attempts_left > 0 "
                "AND expires_at >= $2 RETURNING user_id, attempts_left, expires_at, at, name_key, device",
                key, time.time())
            if row is None:  # unknown, expired or out of attempts: gone for good
                await t.conn.execute("DELETE FROM mfa_tokens WHERE key = $1", key)
                return None
            return MfaTicket(row["user_id"], Attempt(row["at"], row["name_key"], "", row["device"]),
                             row["attempts_left"], row["expires_at"])

        return await self._transact(tx)

    async def end_mfa_token(self, key: str) -> bool:
        return bool(await self._transact(lambda t: t.conn.fetchval(
            "DELETE FROM mfa_tokens WHERE key = $1 RETURNING true", key)))

    # -- TOTP: replay guard and recovery codes ----------------------------------------------------

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        return bool(await self._transact(lambda t: t.conn.fetchval(
            "INSERT INTO totp_steps (user_id, step) SELECT $1::text, $2 WHERE EXISTS "
            "(SELECT 1 FROM users WHERE id = $1::text) ON CONFLICT (user_id) DO UPDATE SET step = excluded.step "
            "WHERE totp_steps.step < excluded.step RETURNING true", user_id, step)))

    async def set_recovery_codes(self, user_id: str, hashes: list[str]) -> None:
        async def tx(t: _Tx) -> None:
            if await t.conn.fetchval("SELECT id FROM users WHERE id = $1 FOR KEY SHARE", user_id) is None:
                raise UnknownOwner(user_id)
            await t.conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
            await t.conn.execute("INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::text[]) "
                                 "ON CONFLICT DO NOTHING", user_id, list(hashes))

        await self._transact(tx)

    async def use_recovery_code(self, user_id: str, code_hash: str) -> bool:
        return bool(await self._transact(lambda t: t.conn.fetchval(
            "DELETE FROM recovery_codes WHERE user_id = $1 AND hash = $2 RETURNING true", user_id, code_hash)))
