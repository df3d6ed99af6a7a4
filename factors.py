"""Beyond passwords: passkeys (WebAuthn) for passwordless sign-in, and TOTP as a second factor,
as ``accounts.py`` is for passwords. The routes in ``routers/factors.py`` stay a few lines each.

**Passkeys** (py_webauthn on the server, @simplewebauthn/browser in the SPA). Each set of options
carries a random challenge that the store keeps (``FactorStore.put_webauthn_challenge``) for
``CHALLENGE_SECONDS``, valid on every worker and host, and gives back once
(``take_webauthn_challenge``): a replayed response finds nothing. Registration asks for a
discoverable credential (resident key required, so the login needs no username) and user
verification where the authenticator can; attestation is ``none`` (we trust the key, not the
device's make). A passkey login checks the signature and that the authenticator's counter went
forward (compare-and-set in the store: a cloned authenticator falls behind), then ends like a
password login (``accounts.start_session``: device token, a visitor's data merged). No hash is
computed, so it never waits behind password logins; the per-address login budget applies.

**TOTP** (RFC 6238 with pyotp: 6 digits, 30 s steps, one step of clock drift either way). The
secret is stored encrypted (AES-GCM under a key derived from the service's secret, bound to the
account's id), pending until a first code confirms it; then a password login stops at
``403 Second factor required`` with an ``mfa_token`` (accounts.py), which ``login_mfa`` trades,
with a code or a recovery code, for the usual answer. A code works once: the store accepts a
time step only if it is later than the last one accepted. The ten recovery codes are shown once
and kept as keyed digests (they are random, so a fast keyed hash is enough: no bcrypt).

Turning TOTP on or off and adding or removing a passkey end every other session of the account,
as a password change does: whoever else was signed in must sign in again under the new rules.
"""

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import replace
from typing import Any

from fastapi import HTTPException, status

from accounts import LOGIN_BUDGET, Caller, LoggedIn, mfa_key, reauthenticate, start_session
from authentication import AuthHandler
from deps import Identity, too_many_requests, unauthorized
from ratelimit import RateLimiter
from settings import Settings
from store import Attempt, Passkey, RateLimited, Store, UnknownOwner, User
from trust import Trust, derive_key

CHALLENGE_SECONDS = 300
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud or copied by hand
TOTP_DIGITS, TOTP_STEP = 6, 30
INVALID_PASSKEY = "Invalid passkey"
INVALID_CODE = "Invalid code"
CODE_USED = "Code already used; wait for the next one"
INVALID_MFA = "Invalid or expired mfa_token; log in again"
STALE_CHALLENGE = "Unknown, expired or already used challenge: ask for new options"
# webauthn's AuthenticatorTransport values, spelt out so the module need not import webauthn to start
TRANSPORTS = frozenset({"ble", "cable", "hybrid", "internal", "nfc", "smart-card", "usb"})
_B64URL = re.compile(r"[A-Za-z0-9_-]{16,1400}")  # a challenge (32 bytes) or a credential id (≤ 1023 bytes)


class Factors:
    """The service's WebAuthn relying party and its keys for TOTP secrets and recovery codes
    (derived from the signing secret, so nothing new to configure and every host agrees)."""

    def __init__(self, secret: str, rp_id: str, rp_name: str, origins: list[str]) -> None:
        # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._seal = AESGCM(derive_key(secret, "totp"))
        self._recovery_key = derive_key(secret, "recovery-codes")
        self.rp_id, self.rp_name, self.origins = rp_id, rp_name, origins

    @classmethod
    def from_settings(cls, secret: str, settings: Settings) -> "Factors":
        return cls(secret, settings.webauthn_rp_id, settings.webauthn_rp_name, settings.webauthn_origins)

    def seal(self, totp_secret: str, user_id: str) -> str:
        nonce = secrets.token_bytes(12)
        return "v1." + _b64(nonce + self._seal.encrypt(nonce, totp_secret.encode(), user_id.encode()))

    def unseal(self, sealed: str | None, user_id: str) -> str | None:
        """The TOTP secret, or ``None`` if there is none (or it was not sealed for this account)."""
        # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
        from cryptography.exceptions import InvalidTag
        if not sealed or not sealed.startswith("v1."):
            return None
        try:
            blob = base64.urlsafe_b64decode(sealed[3:] + "=" * (-len(sealed[3:]) % 4))
            return self._seal.decrypt(blob[:12], blob[12:], user_id.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            return None

    def recovery_hash(self, user_id: str, code: str) -> str:
        normal = re.sub(r"[\s-]", "", code).lower()
        return hmac.new(self._recovery_key, f"{user_id}\0{normal}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _options(options: Any) -> dict[str, Any]:
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn import (
        options_to_json,
    )
    return json.loads(options_to_json(options))


def _challenge_of(credential: dict[str, Any]) -> str | None:
    """The challenge a response's client data names, if it looks like one of ours."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn.helpers import base64url_to_bytes
    try:
        response = credential.get("response")
        client_data = json.loads(base64url_to_bytes(response["clientDataJSON"]))  # type: ignore[index]
        challenge = client_data["challenge"]
    except (TypeError, KeyError, ValueError, AttributeError, binascii.Error):
        return None
    return challenge if isinstance(challenge, str) and _B64URL.fullmatch(challenge) else None


async def _new_challenge(store: Store, purpose: str, user_id: str | None) -> bytes:
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn.helpers import bytes_to_base64url
    challenge = secrets.token_bytes(32)
    await store.put_webauthn_challenge(bytes_to_base64url(challenge), purpose, user_id, time.time() + CHALLENGE_SECONDS)
    return challenge


def _login_budget(limiter: RateLimiter, caller: Caller) -> None:
    try:
        limiter.hit("login", caller.client)
    except RateLimited as exc:
        raise too_many_requests(LOGIN_BUDGET, exc.retry_after) from None


# -- passkeys ------------------------------------------------------------------------------------


async def registration_options(user: User, store: Store, factors: Factors) -> dict[str, Any]:
    """Creation options for a new passkey of ``user``, its existing ones excluded."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn import (
        generate_registration_options,
    )
    from webauthn.helpers import base64url_to_bytes
    from webauthn.helpers.structs import (
        AuthenticatorSelectionCriteria,
        AuthenticatorTransport,
        PublicKeyCredentialDescriptor,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )
    exclude = [PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id),
                                             transports=[AuthenticatorTransport(t) for t in p.transports])
               for p in await store.list_passkeys(user.id)]
    challenge = await _new_challenge(store, "register", user.id)
    return _options(generate_registration_options(
        rp_id=factors.rp_id, rp_name=factors.rp_name, user_name=user.username, user_id=user.id.encode(),
        user_display_name=user.username, challenge=challenge, timeout=CHALLENGE_SECONDS * 1000,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.PREFERRED),
        exclude_credentials=exclude))


async def register_passkey(identity: Identity, credential: dict[str, Any], name: str | None, store: Store,
                           factors: Factors) -> Passkey:
    """Verify a new passkey's attestation against a challenge of this account's and keep it;
    every other session of the account ends. 400 with what is wrong."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn import (
        verify_registration_response,
    )
    from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
    from webauthn.helpers.exceptions import WebAuthnException
    challenge = _challenge_of(credential)
    entry = await store.take_webauthn_challenge(challenge) if challenge else None
    if entry is None or entry.purpose != "register" or entry.user_id != identity.id:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, STALE_CHALLENGE)
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=base64url_to_bytes(challenge or ""),
            expected_rp_id=factors.rp_id, expected_origin=factors.origins)
    except WebAuthnException as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Invalid passkey registration: {exc}") from None
    except Exception:  # noqa: BLE001  (a malformed credential breaks the parser in many ways)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid passkey registration: malformed credential") from None
    transports = credential.get("response", {}).get("transports")
    passkey = Passkey(uuid.uuid4().hex, identity.id, bytes_to_base64url(verified.credential_id),
                      verified.credential_public_key, verified.sign_count, name or "Passkey", time.time(), None,
                      tuple(t for t in transports if t in TRANSPORTS) if isinstance(transports, list) else ())
    try:
        added = await store.add_passkey(passkey, keep_session=identity.session_id)
    except UnknownOwner:
        raise unauthorized("Invalid token") from None
    if not added:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "This passkey is already registered")
    return passkey


async def login_options(store: Store, factors: Factors) -> dict[str, Any]:
    """Request options for a discoverable credential: any passkey of this site may answer."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn import (
        generate_authentication_options,
    )
    from webauthn.helpers.structs import (
        UserVerificationRequirement,
    )
    challenge = await _new_challenge(store, "login", None)
    return _options(generate_authentication_options(
        rp_id=factors.rp_id, challenge=challenge, timeout=CHALLENGE_SECONDS * 1000, allow_credentials=[],
        user_verification=UserVerificationRequirement.PREFERRED))


async def login_passkey(credential: dict[str, Any], caller: Caller, store: Store, auth: AuthHandler, trust: Trust,
                        limiter: RateLimiter, factors: Factors) -> LoggedIn:
    """Log in with a passkey: the same answer as a password login. 429 over the address's login
    budget; 401 ``Invalid passkey`` for anything wrong (no detail that would help a forger)."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    from webauthn import (
        verify_authentication_response,
    )
    from webauthn.helpers import base64url_to_bytes
    _login_budget(limiter, caller)
    challenge = _challenge_of(credential)
    entry = await store.take_webauthn_challenge(challenge) if challenge else None
    credential_id = credential.get("id")
    if entry is None or entry.purpose != "login" or not isinstance(credential_id, str) \
            or not _B64URL.fullmatch(credential_id):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_PASSKEY)
    passkey = await store.find_passkey(credential_id)
    if passkey is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_PASSKEY)
    handle = (credential.get("response") or {}).get("userHandle")
    if handle is not None and handle != _b64(passkey.user_id.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_PASSKEY)
    try:
        verified = verify_authentication_response(
            credential=credential, expected_challenge=base64url_to_bytes(challenge or ""),
            expected_rp_id=factors.rp_id, expected_origin=factors.origins,
            credential_public_key=passkey.public_key, credential_current_sign_count=passkey.sign_count)
    except Exception:  # noqa: BLE001  (WebAuthnException, or a malformed credential)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_PASSKEY) from None
    if not await store.use_passkey(passkey.id, verified.new_sign_count, time.time()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_PASSKEY)  # a concurrent login got ahead
    user = await store.get_user(passkey.user_id)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_PASSKEY)
    attempt = Attempt(time.time(), trust.name_key(user.username), caller.client)
    return await start_session(user, attempt, caller, store, auth, trust, gone=INVALID_PASSKEY)


async def remove_passkey(identity: Identity, passkey_id: str, store: Store) -> bool:
    return await store.remove_passkey(identity.id, passkey_id, keep_session=identity.session_id)


# -- TOTP ----------------------------------------------------------------------------------------


def _step_of(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step (``now`` ± 1) whose code ``code`` is, if any."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    import pyotp
    code = re.sub(r"\s", "", code)
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    step = int((time.time() if now is None else now) // TOTP_STEP)
    for candidate in (step - 1, step, step + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


async def begin_totp(identity: Identity, password: str, caller: Caller, store: Store, auth: AuthHandler,
                     trust: Trust, settings: Settings, factors: Factors) -> tuple[str, str]:
    """Check the password, then a new secret, pending until ``confirm_totp``: ``(secret, otpauth URI)``.
    409 while TOTP is on (turning it off first needs a code)."""
    # imported on first use: webauthn, cryptography and pyotp hold ~20 MB the service needs only here
    import pyotp
    user = await reauthenticate(identity, password, caller, store, auth, trust, settings)
    if user.totp_enabled:
        raise HTTPException(status.HTTP_409_CONFLICT, "TOTP is already on; turn it off first")
    secret = pyotp.random_base32()
    if await store.update_user(user.id, totp_secret=factors.seal(secret, user.id)) is None:
        raise unauthorized("Invalid token")
    uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP).provisioning_uri(
        name=user.username, issuer_name=factors.rp_name)
    return secret, uri


async def confirm_totp(identity: Identity, code: str, store: Store, factors: Factors) -> list[str]:
    """A first code turns the pending secret on: ten recovery codes (shown once), and every other
    session ends. 400 ``Invalid code``; 409 without a pending secret."""
    user = await store.get_user(identity.id)
    if user is None:
        raise unauthorized("Invalid token")
    secret = factors.unseal(user.totp_secret, user.id)
    if user.totp_enabled or secret is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "TOTP is already on" if user.totp_enabled
                            else "No TOTP setup to confirm: POST /users/me/totp first")
    step = _step_of(secret, code)
    if step is None or not await store.use_totp_step(user.id, step):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_CODE)
    codes = ["".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10)) for _ in range(RECOVERY_CODES)]
    codes = [f"{c[:5]}-{c[5:]}" for c in codes]
    try:
        await store.set_recovery_codes(user.id, [factors.recovery_hash(user.id, c) for c in codes])
    except UnknownOwner:
        raise unauthorized("Invalid token") from None
    await store.update_user(user.id, totp_enabled=True)
    await store.end_other_sessions(user.id, identity.session_id)
    return codes


async def _second_factor_ok(user: User, code: str, store: Store, factors: Factors) -> bool | None:
    """Whether ``code`` (a TOTP code or a recovery code) proves the factor; ``None``: a TOTP code
    already used."""
    secret = factors.unseal(user.totp_secret, user.id)
    step = _step_of(secret, code) if secret else None
    if step is not None:
        return True if await store.use_totp_step(user.id, step) else None
    return await store.use_recovery_code(user.id, factors.recovery_hash(user.id, code))


async def disable_totp(identity: Identity, password: str, code: str, caller: Caller, store: Store,
                       auth: AuthHandler, trust: Trust, settings: Settings, factors: Factors) -> None:
    """The password and a code (or a recovery code) turn TOTP off; every other session ends.
    400 ``Invalid code``; 409 when it is not on."""
    user = await reauthenticate(identity, password, caller, store, auth, trust, settings)
    if not user.totp_enabled:
        raise HTTPException(status.HTTP_409_CONFLICT, "TOTP is off")
    if not await _second_factor_ok(user, code, store, factors):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_CODE)
    await store.update_user(user.id, totp_enabled=False, totp_secret=None)
    await store.set_recovery_codes(user.id, [])
    await store.end_other_sessions(user.id, identity.session_id)


async def login_mfa(mfa_token: str, code: str | None, recovery_code: str | None, caller: Caller, store: Store,
                    auth: AuthHandler, trust: Trust, limiter: RateLimiter, factors: Factors) -> LoggedIn:
    """The second step of a password login with TOTP on. 401: an unknown, expired, used or
    exhausted ``mfa_token``, a wrong code (each counts against the token's attempts), a TOTP
    code already used; 429 over the address's login budget."""
    _login_budget(limiter, caller)
    key = mfa_key(mfa_token)
    ticket = await store.try_mfa_token(key)
    user = await store.get_user(ticket.user_id) if ticket else None
    if ticket is None or user is None or not user.totp_enabled:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_MFA)
    if code is not None:
        secret = factors.unseal(user.totp_secret, user.id)
        step = _step_of(secret, code) if secret else None
        if step is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_CODE)
        if not await store.use_totp_step(user.id, step):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, CODE_USED)
    elif not await store.use_recovery_code(user.id, factors.recovery_hash(user.id, recovery_code or "")):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_CODE)
    if not await store.end_mfa_token(key):  # another request with a right code finished it first
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, INVALID_MFA)
    return await start_session(user, replace(ticket.attempt, client=caller.client), caller, store, auth, trust)
