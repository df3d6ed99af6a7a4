"""What a caller can show instead of being refused: a device it logged in from, or work it did.

A limit that a stranger can trigger against someone else is a denial of service: 50 failed
logins from anywhere used to lock an account for its owner too. So the login limits now ask two
questions before refusing (accounts.py):

- **Is this a device the owner used before?** Every successful login answers a *device token*
  (OWASP's "device cookie"): ``dt1.<random>.<tag>``, where ``tag`` is an HMAC of the random part
  and the account id under a key derived from the service's secret. A token is therefore bound to
  its account and checked for forgery in memory, before any store read; the store keeps only a
  digest of the random part (``device_key``) with the account, its expiry and its own failure
  count, so a password change or "log out everywhere" can revoke it. A login that carries a
  valid one is *trusted*: no account or address limit applies to it, and it hashes first.
- **Has it paid?** Anyone else may be asked for proof of work (ALTCHA, the ``altcha`` library's
  v1 format): ``GET /challenge`` hands out a challenge signed with another derived key, so every
  host and worker accepts it without shared state, expiring after ``CHALLENGE_EXPIRE_SECONDS``;
  a solution costs a browser about a second at the default difficulty and the server one hash to
  check. The store spends each solution once (``Store.spend_once``), so a replay is refused.

Keys are derived from the signing secret with HMAC and a label each, so no new secret has to be
configured and no derived key can be used as another. Nothing here touches the store.
"""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from altcha import create_challenge_v1, extract_params_v1, verify_solution_v1

from models import normalize_username

DEVICE_PREFIX = "dt1"
ALTCHA_ALGORITHM = "SHA-256"
MAX_SOLUTION_CHARS = 2048  # a real solution is ~300 characters


def derive_key(secret: str, label: str) -> bytes:
    """A key for one purpose, from the service's secret."""
    return hmac.new(secret.encode(), b"farm-auth " + label.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Solution:
    """A verified, unexpired proof of work: ``key`` is what the store spends, until ``expires_at``."""

    key: str
    expires_at: float


class Trust:
    def __init__(self, secret: str, device_days: float = 180, challenge_seconds: float = 300,
                 challenge_max_number: int = 100_000) -> None:
        self._device_key = derive_key(secret, "device-token")
        self._name_key = derive_key(secret, "login-failures")
        self._altcha_key = derive_key(secret, "altcha").hex()
        self.device_seconds = device_days * 86400
        self.challenge_seconds = challenge_seconds
        self.challenge_max_number = challenge_max_number

    # -- names -------------------------------------------------------------------------------

    def name_key(self, username: str) -> str:
        """The key of a username's failure counters: a keyed digest of its normalised form, so a
        password typed into the name field is never kept, and the key cannot be reversed."""
        name = normalize_username(username).encode("utf-8", "surrogatepass")
        return hmac.new(self._name_key, name, hashlib.sha256).hexdigest()[:32]

    # -- device tokens -----------------------------------------------------------------------

    def _tag(self, random_part: str, user_id: str) -> str:
        return _b64(hmac.new(self._device_key, f"{random_part}\0{user_id}".encode(), hashlib.sha256).digest()[:18])

    def issue_device(self, user_id: str) -> tuple[str, str]:
        """A new device token for ``user_id`` and the key the store keeps for it."""
        random_part = _b64(secrets.token_bytes(24))
        return f"{DEVICE_PREFIX}.{random_part}.{self._tag(random_part, user_id)}", device_key(random_part)

    def device_key_for(self, token: str | None, user_id: str) -> str | None:
        """The store key of ``token`` if it is a device token issued for ``user_id`` (forged,
        malformed or another account's: ``None``); whether it is still valid, the store says."""
        if not token:
            return None
        prefix, _, rest = token.partition(".")
        random_part, _, tag = rest.partition(".")
        if prefix != DEVICE_PREFIX or not random_part or not hmac.compare_digest(tag, self._tag(random_part, user_id)):
            return None
        return device_key(random_part)

    # -- proof of work -----------------------------------------------------------------------

    def challenge(self) -> dict[str, object]:
        """A new ALTCHA challenge (v1), as the ``altcha`` library writes it."""
        expires = datetime.now(UTC) + timedelta(seconds=self.challenge_seconds)
        return create_challenge_v1(algorithm=ALTCHA_ALGORITHM, max_number=self.challenge_max_number,
                                   hmac_key=self._altcha_key, expires=expires).to_dict()

    def verify(self, payload: str | None) -> Solution | None:
        """The solution in ``payload`` (base64 of the ALTCHA JSON) if it solves a challenge this
        service signed and has not expired; ``None`` for anything else. Not yet spent: the
        caller asks the store (``spend_once``)."""
        if not payload or len(payload) > MAX_SOLUTION_CHARS:
            return None
        try:
            data = json.loads(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            return None
        if not (isinstance(data, dict) and data.get("algorithm") == ALTCHA_ALGORITHM
                and all(isinstance(data.get(k), str) for k in ("challenge", "salt", "signature"))
                and isinstance(data.get("number"), int) and not isinstance(data.get("number"), bool)):
            return None
        expires = extract_params_v1(data).get("expires") or [""]
        if not expires[0].isdigit():
            return None  # every challenge we sign expires
        ok, _ = verify_solution_v1(data, self._altcha_key, check_expires=True)
        return Solution("altcha:" + data["challenge"], float(expires[0])) if ok else None


def device_key(random_part: str) -> str:
    """What the store keeps of a device token: a digest of its random part."""
    return hashlib.sha256(random_part.encode()).hexdigest()[:32]
