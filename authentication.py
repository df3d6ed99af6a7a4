"""Password hashing and JWTs: the book's ``AuthHandler``, made safe to run under load.

bcrypt is slow on purpose (~0.27 s at cost 12), so it never runs on the event loop: hashes run in a
pool with one thread per usable core, at the lowest scheduling priority, so a login storm takes
spare CPU from the loop instead of stalling every other request.

Token kinds share one signing key and are told apart by ``typ``: ``access`` and ``refresh`` for
accounts (both bound to a login session ``sid``, so logout can revoke them), ``anonymous`` for
visitors (``sub = "anonymous_<uuid>"``). Decoding pins HS256 and requires ``exp``, ``iat``, ``sub``.
"""

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
from passlib.context import CryptContext

import metrics
from admission import OTHER, ClientGone, HashGate, Overloaded, Watch
from models import normalize_password

__all__ = ["ALGORITHM", "ANONYMOUS_PREFIX", "AuthHandler", "ClientGone", "Overloaded", "TokenError"]

ALGORITHM = "HS256"
ANONYMOUS_PREFIX = "anonymous_"
_TOKEN_CACHE_SIZE = 10_000
# Niceness of the hashing threads: the event loop (nice 0) gets ~90% of a contended core, so a
# login storm barely slows other requests, yet logins are not starved (19 left them ~1.5%).
HASH_NICENESS = 10


class TokenError(Exception):
    """Carries the 401 detail: ``Invalid token`` or ``Signature has expired``."""


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)  # Linux: per thread
    except OSError:
        pass


class AuthHandler:
    def __init__(self, secret: str, bcrypt_rounds: int = 12, access_minutes: float = 30,
                 refresh_days: float = 7, anonymous_days: float = 30, hash_max_wait: float = 0) -> None:
        self._secret = secret
        self.pwd_context = CryptContext(schemes=["bcrypt"], bcrypt__rounds=bcrypt_rounds)
        self.access_seconds = round(access_minutes * 60)
        self.refresh_seconds = round(refresh_days * 86400)
        self.anonymous_seconds = round(anonymous_days * 86400)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(cores, "bcrypt", initializer=_lower_priority)
        self._lane = ThreadPoolExecutor(1, "bcrypt-trusted")  # the loop's priority (admission.py)
        # Verified tokens by their exact string: a hit skips the HMAC and JSON work; expiry is
        # still checked on every use, and revocation by the caller (sessions, identities).
        self._verified: dict[str, dict[str, Any]] = {}
        self._dummy_hash = self.pwd_context.hash(uuid.uuid4().hex)  # loads the backend: not timed
        started = time.perf_counter()
        self._verify("", self._dummy_hash)  # the first estimate of a hash's time; measured from then on
        self.hashing = HashGate(self._pool, cores, time.perf_counter() - started, hash_max_wait, self._lane)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._lane.shutdown(wait=False, cancel_futures=True)

    # -- passwords -----------------------------------------------------------------------------

    async def get_password_hash(self, password: str, client: str = "", watch: Watch | None = None,
                                priority: int = OTHER) -> str:
        """The hash of the NFKC form of ``password`` (``models.normalize_password``), in the pool,
        admitted by ``hashing`` (``client``'s queue in class ``priority``; ``watch`` returns once
        the client has gone): raises ``Overloaded`` or ``ClientGone`` instead of hashing."""
        return await metrics.timed_hash(self.hashing, client, watch, self.pwd_context.hash,
                                        normalize_password(password), priority=priority)

    async def verify_password(self, password: str, hashed: str | None, client: str = "",
                              watch: Watch | None = None, priority: int = OTHER) -> bool:
        """Check ``password``; with no hash (unknown user) check a dummy one, so both cases take
        the same time and the response does not reveal which usernames exist. Admitted like
        ``get_password_hash``."""
        ok = await metrics.timed_hash(self.hashing, client, watch, self._verify, password,
                                      hashed or self._dummy_hash, priority=priority)
        return ok and hashed is not None

    async def check_password(self, password: str, hashed: str | None, client: str = "",
                             watch: Watch | None = None, priority: int = OTHER) -> tuple[bool, bool]:
        """(verified, rehash): ``verify_password`` on the NFKC form, and for a hash made before
        passwords were normalised, on the password as typed; such a match (or a hash at another
        cost) asks for a rehash. Unknown users try the dummy hash the same way: same timing."""
        normalized = normalize_password(password)
        if await self.verify_password(normalized, hashed, client, watch, priority):
            return True, self.needs_rehash(hashed or "")
        if normalized != password and await self.verify_password(password, hashed, client, watch, priority):
            return True, True
        return False, False

    def needs_rehash(self, hashed: str) -> bool:
        """True for a hash made at another cost: rehashed at login, so that every account (and
        the dummy hash of unknown users) costs the same time to check."""
        try:
            return self.pwd_context.needs_update(hashed)
        except (ValueError, TypeError):
            return False

    def _verify(self, password: str, hashed: str) -> bool:
        try:
            return self.pwd_context.verify(password, hashed)
        except (ValueError, TypeError):  # a malformed hash in a hand-edited store
            return False

    # -- tokens --------------------------------------------------------------------------------

    def _encode(self, claims: dict[str, Any], lifetime: int) -> str:
        now = int(time.time())
        return jwt.encode({**claims, "iat": now, "exp": now + lifetime}, self._secret, algorithm=ALGORITHM)

    def encode_token(self, user_id: str, username: str, session_id: str) -> str:
        """An access token for an account; ``sub`` is the user id as a string (PyJWT >= 2.10)."""
        claims = {"sub": str(user_id), "username": username, "typ": "access", "sid": session_id,
                  "jti": uuid.uuid4().hex}
        return self._encode(claims, self.access_seconds)

    def encode_refresh_token(self, user_id: str, session_id: str, jti: str, expires_at: float | None = None) -> str:
        """``expires_at``: the session's own expiry, when re-issuing its current refresh token."""
        claims = {"sub": str(user_id), "typ": "refresh", "sid": session_id, "jti": jti}
        lifetime = self.refresh_seconds if expires_at is None else max(1, round(expires_at - time.time()))
        return self._encode(claims, lifetime)

    def encode_anonymous_token(self, anonymous_id: str) -> str:
        return self._encode({"sub": anonymous_id, "typ": "anonymous"}, self.anonymous_seconds)

    def decode_token(self, token: str, kinds: tuple[str, ...] = ("access", "anonymous")) -> dict[str, Any]:
        """Verified claims of ``token`` if its ``typ`` is one of ``kinds``; else ``TokenError``."""
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                    options={"require": ["exp", "iat", "sub"]})
            except jwt.ExpiredSignatureError:
                raise TokenError("Signature has expired") from None
            except jwt.InvalidTokenError:
                raise TokenError("Invalid token") from None
            if not _well_formed(claims):
                raise TokenError("Invalid token")
            if len(self._verified) >= _TOKEN_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        elif claims["exp"] <= time.time():
            del self._verified[token]
            raise TokenError("Signature has expired")
        if claims["typ"] not in kinds:
            raise TokenError("Invalid token")
        return claims


def _well_formed(claims: dict[str, Any]) -> bool:
    typ, sub = claims.get("typ"), claims["sub"]
    if typ == "anonymous":
        return isinstance(sub, str) and sub.startswith(ANONYMOUS_PREFIX)
    return (typ in ("access", "refresh") and isinstance(sub, str) and isinstance(claims.get("sid"), str)
            and isinstance(claims.get("jti"), str) and not sub.startswith(ANONYMOUS_PREFIX))
