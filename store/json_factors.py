"""``JsonStore``'s passkeys and second factors (``protocol.FactorStore``): a mixin of ``JsonStore``
(json_store.py), on the same journaled tables, so each method is one transaction under the
cross-worker lock like every other write.

- ``passkeys``: one document per passkey (its id the key), indexed in memory by credential id
  (``_index_factor``, kept in step by the journal like the username index);
- ``webauthn_challenges``: a challenge handed out with WebAuthn options, until taken or expired;
- ``mfa_tokens``: a password login waiting for its second factor, by the digest of its token;
- ``totp_steps`` and ``recovery_codes``: per account, the last TOTP time step accepted and the
  digests of the unused recovery codes.

Times are Unix seconds; the public key is kept as base64url (JSON has no bytes).
"""

import base64
import time
from collections.abc import Mapping
from typing import Any

from journal import Change

from .records import Attempt, MfaTicket, Passkey, UnknownOwner, User, WebAuthnChallenge

FACTOR_TABLES = ("passkeys", "webauthn_challenges", "mfa_tokens", "totp_steps", "recovery_codes")
EXPIRING = ("webauthn_challenges", "mfa_tokens")  # rows with an ``expires_at`` that ``prune`` drops


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _passkey_doc(p: Passkey) -> dict[str, Any]:
    return {"user_id": p.user_id, "credential_id": p.credential_id, "public_key": _b64(p.public_key),
            "sign_count": p.sign_count, "name": p.name, "created_at": p.created_at, "last_used_at": p.last_used_at,
            "transports": list(p.transports)}


def _passkey(key: str, doc: dict[str, Any]) -> Passkey:
    return Passkey(key, doc["user_id"], doc["credential_id"], _unb64(doc["public_key"]), int(doc["sign_count"]),
                   doc["name"], doc["created_at"], doc.get("last_used_at"), tuple(doc.get("transports", ())))


class JsonFactors:
    t: dict[str, dict[str, Any]]
    _users: Mapping[str, User]  # JsonStore's accounts by id
    _by_credential: dict[str, str]  # credential id -> passkey id (set up by JsonStore)

    _db: Any  # JsonStore's journal.JournaledTables

    async def _transact(self, fn: Any) -> Any:  # JsonStore's
        raise NotImplementedError

    def _index_factor(self, table: str, key: str, old: Any, new: Any) -> None:
        """Keep the credential-id index in step with the passkeys table (called by the journal)."""
        if table != "passkeys":
            return
        if old is not None and self._by_credential.get(old["credential_id"]) == key:
            del self._by_credential[old["credential_id"]]
        if new is not None:
            self._by_credential[new["credential_id"]] = key

    def _factor_rows(self, user_id: str) -> list[Change]:
        """Everything of these tables an account owns: gone with the account (``delete_user``)."""
        changes: list[Change] = [(table, k, None) for table in ("passkeys", "webauthn_challenges", "mfa_tokens")
                                 for k, v in self.t[table].items() if v.get("user_id") == user_id]
        return changes + [(table, user_id, None) for table in ("totp_steps", "recovery_codes")
                          if user_id in self.t[table]]

    def _other_sessions(self, user_id: str, keep_session: str | None) -> list[Change]:
        return [("sessions", sid, None) for sid, s in self.t["sessions"].items()
                if s["user_id"] == user_id and sid != keep_session]

    # -- WebAuthn challenges ---------------------------------------------------------------------

    async def put_webauthn_challenge(self, challenge: str, purpose: str, user_id: str | None,
                                     expires_at: float) -> None:
        doc = {"purpose": purpose, "user_id": user_id, "expires_at": expires_at}
        await self._transact(lambda: (None, [("webauthn_challenges", challenge, doc)]))

    async def take_webauthn_challenge(self, challenge: str) -> WebAuthnChallenge | None:
        def tx() -> tuple[WebAuthnChallenge | None, list[Change]]:
            doc = self.t["webauthn_challenges"].get(challenge)
            if doc is None:
                return None, []
            spent: list[Change] = [("webauthn_challenges", challenge, None)]
            if doc["expires_at"] < time.time():
                return None, spent
            return WebAuthnChallenge(doc["purpose"], doc["user_id"], doc["expires_at"]), spent

        return await self._transact(tx)

    # -- passkeys --------------------------------------------------------------------------------

    async def add_passkey(self, passkey: Passkey, keep_session: str | None = None) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            if passkey.user_id not in self._users:
                raise UnknownOwner(passkey.user_id)
            if passkey.credential_id in self._by_credential:
                return False, []
            return True, [("passkeys", passkey.id, _passkey_doc(passkey)),
                          *self._other_sessions(passkey.user_id, keep_session)]

        return await self._transact(tx)

    async def list_passkeys(self, user_id: str) -> list[Passkey]:
        self._db.refresh()
        keys = sorted((p for p in self.t["passkeys"].items() if p[1]["user_id"] == user_id),
                      key=lambda p: (p[1]["created_at"], p[0]))
        return [_passkey(k, doc) for k, doc in keys]

    async def find_passkey(self, credential_id: str) -> Passkey | None:
        self._db.refresh()
        key = self._by_credential.get(credential_id)
        return _passkey(key, self.t["passkeys"][key]) if key is not None else None

    async def use_passkey(self, passkey_id: str, sign_count: int, at: float) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            doc = self.t["passkeys"].get(passkey_id)
            if doc is None or not (sign_count > doc["sign_count"] or sign_count == doc["sign_count"] == 0):
                return False, []
            return True, [("passkeys", passkey_id, {**doc, "sign_count": sign_count, "last_used_at": at})]

        return await self._transact(tx)

    async def remove_passkey(self, user_id: str, passkey_id: str, keep_session: str | None = None) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            doc = self.t["passkeys"].get(passkey_id)
            if doc is None or doc["user_id"] != user_id:
                return False, []
            return True, [("passkeys", passkey_id, None), *self._other_sessions(user_id, keep_session)]

        return await self._transact(tx)

    async def end_other_sessions(self, user_id: str, keep_session: str | None) -> None:
        await self._transact(lambda: (None, self._other_sessions(user_id, keep_session)))

    # -- a login waiting for its second factor ---------------------------------------------------

    async def add_mfa_token(self, key: str, user_id: str, attempt: Attempt, attempts: int, expires_at: float) -> None:
        doc = {"user_id": user_id, "attempts_left": attempts, "expires_at": expires_at, "at": attempt.at,
               "name_key": attempt.name_key, "device": attempt.device}
        await self._transact(lambda: (None, [("mfa_tokens", key, doc)]))

    async def try_mfa_token(self, key: str) -> MfaTicket | None:
        def tx() -> tuple[MfaTicket | None, list[Change]]:
            doc = self.t["mfa_tokens"].get(key)
            if doc is None:
                return None, []
            if doc["expires_at"] < time.time() or doc["attempts_left"] <= 0:
                return None, [("mfa_tokens", key, None)]
            left = doc["attempts_left"] - 1
            ticket = MfaTicket(doc["user_id"], Attempt(doc["at"], doc["name_key"], "", doc["device"]), left,
                               doc["expires_at"])
            return ticket, [("mfa_tokens", key, {**doc, "attempts_left": left})]

        return await self._transact(tx)

    async def end_mfa_token(self, key: str) -> bool:
        return await self._transact(lambda: (key in self.t["mfa_tokens"], [("mfa_tokens", key, None)]
                                             if key in self.t["mfa_tokens"] else []))

    # -- TOTP: replay guard and recovery codes ---------------------------------------------------

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            if user_id not in self._users:
                return False, []
            if step <= self.t["totp_steps"].get(user_id, {}).get("step", -1):
                return False, []
            return True, [("totp_steps", user_id, {"step": step})]

        return await self._transact(tx)

    async def set_recovery_codes(self, user_id: str, hashes: list[str]) -> None:
        def tx() -> tuple[None, list[Change]]:
            if user_id not in self._users:
                raise UnknownOwner(user_id)
            if not hashes:
                return None, [("recovery_codes", user_id, None)] if user_id in self.t["recovery_codes"] else []
            return None, [("recovery_codes", user_id, {"hashes": list(hashes)})]

        await self._transact(tx)

    async def use_recovery_code(self, user_id: str, code_hash: str) -> bool:
        def tx() -> tuple[bool, list[Change]]:
            hashes = self.t["recovery_codes"].get(user_id, {}).get("hashes", [])
            if code_hash not in hashes:
                return False, []
            rest = [h for h in hashes if h != code_hash]
            return True, [("recovery_codes", user_id, {"hashes": rest} if rest else None)]

        return await self._transact(tx)
