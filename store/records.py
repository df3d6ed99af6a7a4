"""What the store keeps and answers, as records, and the errors it raises.

``User`` is THE account record: one field per persisted attribute. Everything that stores,
loads or copies an account derives from its fields, so nothing lists them again: the JSON file's
document (``user_doc``/``user_from_doc``), PostgreSQL's column lists and row mapping
(``USER_FIELDS``, ``store/pg_base.py``), ``import-json``'s copy (``store/pg_tools.py``) and the
data export's ``profile`` (``public_profile``: every field but the secret ones). Adding an
attribute is a field here (with a default, so records written before it still load), a migration
adding its column, a request/response model and a route; writes go through
``AccountStore.update_user``, which also drops every cached copy on every host.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from journal import StoreError

__all__ = ["SECRET", "USER_FIELDS", "Attempt", "AuditEvent", "ChallengeRequired", "Device", "Failures", "Lockout",
           "MfaTicket", "Passkey", "Personal", "RateLimited", "Rotation", "SessionView", "StoreError", "StoreUnavailable",
           "UnknownOwner", "User", "UsernameTaken", "Visitor", "WebAuthnChallenge", "public_profile", "user_doc",
           "user_from_doc"]

SECRET = {"secret": True}  # field metadata: never in an answer, the export or a log


class UsernameTaken(Exception):
    pass


class UnknownOwner(Exception):
    """The cart's owner is gone (an upgraded or purged visitor, a deleted account)."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))


class ChallengeRequired(RateLimited):
    """Past a limit that a solved proof-of-work challenge lifts (trust.py): an account's failures
    from all addresses, or the service-wide bound on new visitors."""


@dataclass(frozen=True, slots=True)
class User:
    """An account. ``id`` and ``username`` are set once; ``username`` is kept as typed (its
    normalised form and look-alike keys are derived, by both stores, for lookups and uniqueness)."""

    id: str
    username: str
    password: str = field(metadata=SECRET)  # the bcrypt hash
    is_admin: bool = False  # may use the /admin/ routes (routers/admin.py)
    disabled: bool = False  # by an administrator: no login (403), every token refused
    created_at: float | None = None  # registration; None for an account made before this field
    last_login_at: float | None = None  # the last login that started a session (complete_login)
    totp_enabled: bool = False  # a TOTP second factor is on (factors.py): a password alone no longer logs in
    totp_secret: str | None = field(default=None, metadata=SECRET)  # encrypted; set and not enabled: pending


USER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(User))
_SECRET_FIELDS = frozenset(f.name for f in fields(User) if f.metadata.get("secret"))


def user_doc(user: User) -> dict[str, Any]:
    """The account as the JSON file keeps it (the book's ``{"id", "username", "password"}``, and
    any later fields)."""
    return asdict(user)


def user_from_doc(doc: dict[str, Any]) -> User:
    """The account from a stored document or row (a mapping by field name); a field the record
    gained after the document was written takes its default."""
    return User(**{name: doc[name] for name in USER_FIELDS if name in doc})


def public_profile(user: User) -> dict[str, Any]:
    """Every attribute of the account but the secret ones: the export's ``profile``."""
    return {name: getattr(user, name) for name in USER_FIELDS if name not in _SECRET_FIELDS}


@dataclass(frozen=True, slots=True)
class Lockout:
    """The login throttling rules (``0`` disables a limit); ``window`` is in seconds."""

    max_failures: int  # per (username, client address), and per device token
    max_failures_per_account: int  # per username, all addresses together: past it, a challenge
    window: float  # failures older than this stop counting


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login attempt that ``begin_login`` counted as a failure before its password is checked
    (so concurrent guesses cannot slip past a limit); ``complete_login`` takes it back on success,
    ``give_back`` when the password was never checked. ``device``: the key of the device token
    that made it trusted, whose own counter it is on; else it is on the name's and the pair's."""

    at: float
    name_key: str  # trust.Trust.name_key: a keyed digest of the normalised username
    client: str
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A device token as the store keeps it (trust.py): the digest of its random part, for an account."""

    key: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Rotation:
    """A refresh that worked: the refresh ``jti`` to hand out and when the session expires. For a
    concurrent refresh inside the grace period, this is the session's current one."""

    jti: str
    expires_at: float



class StoreUnavailable(Exception):
    """The backend cannot answer right now (a database restarting or unreachable): the request
    gets a 503 with ``Retry-After`` (app.py); the caller may try again shortly."""


@dataclass(frozen=True, slots=True)
class Personal:
    """What personalises the catalogue for one owner, read at once (one round trip on a database)."""

    history: list[tuple[int, float]]  # newest first, with this process's unwritten views
    favourites: list[int]
    cart: dict[int, int]
    preferences: dict[str, str]  # only what the owner has set


@dataclass(frozen=True, slots=True)
class Visitor:
    """An anonymous visitor as the store keeps it (times are Unix seconds)."""

    id: str
    created_at: float
    last_active_at: float



@dataclass(frozen=True, slots=True)
class Failures:
    """One ``login_failures`` counter as both backends keep it: failure times (Unix seconds) in the
    window; ``until``: when the row may be pruned."""

    at: list[float]
    until: float


@dataclass(frozen=True, slots=True)
class SessionView:
    """A login session as its owner sees it (``GET /users/me/sessions``): never its refresh ``jti``.
    ``client`` (``deps.client_address``) and ``user_agent`` are the last login's or refresh's;
    ``None`` for a session made before sessions recorded them."""

    id: str
    created_at: float | None
    last_used_at: float | None
    expires_at: float
    client: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One security event (audit.py). ``id`` sorts by time (``audit.event_id``), so it is also the
    paging cursor; ``detail`` is small and type-specific (never a password, hash or token)."""

    id: str
    at: float
    type: str
    user_id: str | None
    username: str | None
    client: str | None
    user_agent: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Passkey:
    """A WebAuthn credential of an account (factors.py). ``credential_id`` is the authenticator's
    id (base64url), unique over all accounts; ``public_key`` its COSE key; ``sign_count`` the
    authenticator's counter as last seen (a clone's counter falls behind it)."""

    id: str
    user_id: str
    credential_id: str
    public_key: bytes
    sign_count: int
    name: str
    created_at: float
    last_used_at: float | None = None
    transports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebAuthnChallenge:
    """A challenge handed out with WebAuthn options, kept until used once or expired.
    ``purpose``: ``register`` (of ``user_id``'s account) or ``login`` (``user_id`` None)."""

    purpose: str
    user_id: str | None
    expires_at: float


@dataclass(frozen=True, slots=True)
class MfaTicket:
    """A password login waiting for its second factor (an ``mfa_token``'s state): the account,
    the attempt ``begin_login`` counted (taken back when the second factor completes the login),
    and how many wrong codes it may still take."""

    user_id: str
    attempt: Attempt
    attempts_left: int
    expires_at: float
