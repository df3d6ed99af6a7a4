"""Request and response bodies. Passwords only ever come in; no model sends one out.

New usernames must be safe to show beside others: besides today's 3-15 letters, digits, ``_``,
``.`` and ``-``, they follow PRECIS ``UsernameCaseMapped`` (RFC 8265, ``precis-i18n``), use one
script (no Latin mixed with Cyrillic or Greek: ``сarol`` beside ``carol``), hold no invisible
or filler character (U+3164 looks blank), and, written wholly in another script, do not pass for a
Latin name (``раураӏ`` reads ``paypal``; usernames.py). Only registration checks this; logins look
names up as before, so accounts made under the old rule keep working. That a new name must not
look like an existing account's (``admın`` beside ``admin``: a 409) is the store's check, on the
keys ``usernames.lookalike_keys`` computes.
"""

import base64
import binascii
import re
import unicodedata
from typing import Annotated, Any, Literal

from confusable_homoglyphs import categories
from precis_i18n import get_profile
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from usernames import (
    imitated_latin,
    normalize_username,  # noqa: F401  (imported from here by the rest of the code)
)

USERNAME_RE = re.compile(r"[\w.-]{3,15}")
MAX_PASSWORD_BYTES = 72  # bcrypt's limit: longer passwords are refused, never silently truncated
MAX_QUANTITY = 1000


def normalize_password(password: str) -> str:
    """NFKC, as NIST SP 800-63B suggests: the same password typed in NFC or NFD is one password."""
    return unicodedata.normalize("NFKC", password)


USERNAME_PROFILE = get_profile("UsernameCaseMapped")
# Scripts that may share a name (UTS #39 "highly restrictive"): Japanese, Chinese, Korean writing.
MIXABLE_SCRIPTS = ({"HAN", "HIRAGANA", "KATAKANA"}, {"HAN", "BOPOMOFO"}, {"HAN", "HANGUL"})
# Letters (Lo) that render as nothing: Hangul fillers, Braille blank, Mongolian separators.
FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u17b4\u17b5")


def _check_text(value: str) -> str:
    value.encode()  # a lone surrogate raises UnicodeEncodeError, a ValueError: a 422, not a 500 later
    return value


def _check_username(value: str) -> str:
    if not USERNAME_RE.fullmatch(value):
        raise ValueError("username must be 3-15 characters: letters, digits, '_', '.' or '-'")
    if any(c in FILLERS or unicodedata.category(c)[0] in "CZ" for c in value):
        raise ValueError("username must not contain invisible or filler characters")
    try:
        USERNAME_PROFILE.enforce(value)
    except UnicodeError:
        raise ValueError("username must be a valid PRECIS username (RFC 8265): "
                         "no invisible, compatibility or unassigned characters") from None
    scripts = categories.unique_aliases(value) - {"COMMON", "INHERITED"}
    if len(scripts) > 1 and not any(scripts <= mix for mix in MIXABLE_SCRIPTS):
        raise ValueError(f"username must not mix scripts ({', '.join(sorted(s.title() for s in scripts))}): "
                         "look-alike letters from another alphabet are not allowed")
    latin = imitated_latin(value)
    if latin is not None:
        [script] = scripts
        raise ValueError(f"username is written in {script.title()} but looks like the Latin name {latin!r}: "
                         "choose a name that does not imitate another alphabet")
    return value


def _check_password(value: str) -> str:
    if max(len(value.encode()), len(normalize_password(value).encode())) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")
    if "\x00" in value:
        raise ValueError("password must not contain NUL characters")
    return value


def encode_cursor(normalized_username: str) -> str:
    """The opaque ``next_cursor`` of ``GET /users/list``: where the next page starts after."""
    return base64.urlsafe_b64encode(normalized_username.encode()).decode().rstrip("=")


def _decode_cursor(value: str) -> str:
    try:
        name = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, ValueError):  # bad base64, or bytes that are not UTF-8
        name = "\0"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):  # no username holds one (NUL included)
        raise ValueError("cursor is not one that a previous page returned")
    return name


Text = Annotated[str, AfterValidator(_check_text)]
Cursor = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$"),
                   AfterValidator(_decode_cursor)]
Username = Annotated[str, AfterValidator(_check_username)]
Password = Annotated[str, Field(min_length=8), AfterValidator(_check_password)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UserCreate(Strict):
    username: Username = Field(examples=["marko"])
    password: Password = Field(examples=["marko123"])


AltchaSolution = Annotated[Text, Field(min_length=1, max_length=2048, description="a solved challenge of "
                                      "`GET /challenge`: base64 of the ALTCHA payload JSON; each is accepted once")]


class LoginRequest(Strict):
    """Lenient on shape (a wrong password is a 401, not a 422), strict on what bcrypt accepts."""

    username: Text = Field(min_length=1, max_length=64, examples=["marko"])
    password: Annotated[str, Field(min_length=1), AfterValidator(_check_password)] = Field(examples=["marko123"])
    device_token: Text | None = Field(None, max_length=256, description="`device_token` of an earlier login on "
                                      "this device: a valid one makes the attempt trusted; any other is ignored")
    altcha: AltchaSolution | None = None


class ChallengeSolution(Strict):
    altcha: AltchaSolution


class RefreshRequest(Strict):
    refresh_token: Text = Field(min_length=1, max_length=4096)


class LogoutRequest(Strict):
    refresh_token: Text | None = Field(None, max_length=4096)


LoginPassword = Annotated[str, Field(min_length=1), AfterValidator(_check_password)]


class PasswordChange(Strict):
    current_password: LoginPassword = Field(examples=["marko123"])
    new_password: Password = Field(examples=["a-new-password-42"])


class AccountDeletion(Strict):
    """The password again: a stolen access token alone cannot delete the account."""

    password: LoginPassword = Field(examples=["marko123"])


class UserOut(TypedDict):
    """A TypedDict, not a model: FastAPI validates what ``/users/me`` returns on every call, and a
    dict is checked for less than a model costs to build (bench/README.md); same OpenAPI schema."""

    id: str
    username: str


class UserList(BaseModel):
    users: list[UserOut]
    next_cursor: str | None = Field(description="`cursor` for the next page; null on the last page")


class AccountOut(UserOut):
    """The account as its owner (``/users/me``) and an administrator see it: every attribute but
    the password hash. ``created_at``/``last_login_at``: epoch seconds, null when not known."""

    is_admin: bool
    disabled: bool
    created_at: float | None
    last_login_at: float | None


class AccountList(BaseModel):
    users: list[AccountOut]
    next_cursor: str | None = Field(description="`cursor` for the next page; null on the last page")


# -- the audit log and each user's sessions (audit.py) -------------------------------------------------

AuditCursor = Annotated[str, Field(pattern=r"^[0-9a-f]{24}$", description="`next_cursor` of the previous page")]
AuditType = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$", description="only events of this type")]
UserQuery = Annotated[Text, Field(min_length=1, max_length=64, description="a case-insensitive prefix of the username")]


class AuditEventOut(BaseModel):
    id: str
    at: float = Field(description="epoch seconds")
    type: str = Field(examples=["login_failed"])
    user_id: str | None
    username: str | None
    client: str | None = Field(description="the client's address as the service counts it (IPv6: its /64)")
    user_agent: str | None
    detail: dict[str, object] = Field(description="type-specific: `count` of a folded `login_failed`, the acting "
                                      "administrator (`admin_id`, `admin`), `request_id`, ...")


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_cursor: str | None = Field(description="`cursor` for the next (older) page; null on the last page")


class MySession(BaseModel):
    id: str
    created_at: float | None = Field(description="epoch seconds; null for a session older than this field")
    last_used_at: float | None = Field(description="the last login or refresh (coarse: access-token use is not noted)")
    client: str | None
    user_agent: str | None
    current: bool = Field(description="the session of the token that asked")


class MySessions(BaseModel):
    sessions: list[MySession]


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds until `token` expires")
    refresh_token: str


class LoginOut(TokenOut):
    device_token: str = Field(description="keep it on this device (across logouts) and send it with every login: "
                              "a stranger's failed logins will not lock this device out")


class Challenge(BaseModel):
    """An ALTCHA proof-of-work challenge (v1, as the `altcha` library writes it)."""

    algorithm: str = Field(examples=["SHA-256"])
    challenge: str
    maxNumber: int  # ALTCHA's own field name
    salt: str
    signature: str


class AnonymousTokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Item(BaseModel):
    id: int
    name: str
    price: float
    category: str


class Catalogue(BaseModel):
    message: str
    items: list[Item]
    recently_viewed: list[Item] = Field(description="the caller's last viewed items, newest first, at most 10")
    recommended: list[Item] = Field(description="up to 4 items from the categories the caller viewed or favourited")


class CartLine(BaseModel):
    item_id: int
    quantity: int


class Cart(BaseModel):
    items: list[CartLine]


class Quantity(Strict):
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class Message(BaseModel):
    detail: str


class Refusal(Message):
    """A 429/503 that may ask for a solved challenge."""

    challenge_required: bool = Field(False, description="true: send a solved `GET /challenge` as `altcha`")


# -- personalisation ------------------------------------------------------------------------------

SortOrder = Literal["catalogue", "name", "price", "recommended"]
Theme = Literal["light", "dark", "system"]
DEFAULT_PREFERENCES: dict[str, str] = {"sort": "catalogue", "theme": "system"}


class View(BaseModel):
    item_id: int
    viewed_at: float = Field(description="epoch seconds")


class History(BaseModel):
    items: list[View]


class Favourites(BaseModel):
    items: list[int]


class Preferences(BaseModel):
    sort: SortOrder
    theme: Theme


class PreferencesPatch(Strict):
    """Any subset of the preferences; an unknown key or value is a 422."""

    sort: SortOrder = Field(None, description="omitted: unchanged")  # type: ignore[assignment]
    theme: Theme = Field(None, description="omitted: unchanged")  # type: ignore[assignment]


class SessionInfo(BaseModel):
    id: str
    created_at: float | None = Field(description="epoch seconds; null for a session older than this field")
    expires_at: float
    current: bool


# -- passkeys and the TOTP second factor (factors.py, routers/factors.py) ------------------------

Credential = Annotated[dict[str, Any], Field(description="what `navigator.credentials.create()` / `.get()` "
                                            "answered, as JSON (WebAuthn Level 3 `toJSON()`, or "
                                            "@simplewebauthn/browser's `startRegistration` / `startAuthentication`)")]
Code = Annotated[Text, Field(min_length=1, max_length=64, examples=["123456"])]


class PasskeyRegistration(Strict):
    credential: Credential
    name: Text | None = Field(None, min_length=1, max_length=64, description="shown in the list; default "
                              "\"Passkey\"", examples=["My laptop"])


class PasskeyLogin(Strict):
    credential: Credential


class PasskeyOut(BaseModel):
    id: str
    name: str
    created_at: float


class PasskeyInfo(PasskeyOut):
    last_used_at: float | None = Field(description="epoch seconds of its last login; null: never used")


class PasskeyList(BaseModel):
    passkeys: list[PasskeyInfo]


class TotpSetupRequest(Strict):
    password: LoginPassword = Field(examples=["marko123"])


class TotpSetup(BaseModel):
    secret: str = Field(description="base32, for an authenticator app that cannot scan the QR code")
    otpauth_uri: str = Field(description="`otpauth://totp/...`: what the QR code holds")


class TotpConfirm(Strict):
    code: Code


class TotpDisable(Strict):
    password: LoginPassword = Field(examples=["marko123"])
    code: Code = Field(description="a current code of the authenticator app, or an unused recovery code")


class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(description="each works once in place of a code; shown this once only")


class MfaLogin(Strict):
    """The second step of a password login with TOTP on: one of ``code`` or ``recovery_code``."""

    mfa_token: Text = Field(min_length=1, max_length=256)
    code: Code | None = None
    recovery_code: Code | None = None

    @model_validator(mode="after")
    def _one_code(self) -> "MfaLogin":
        if (self.code is None) == (self.recovery_code is None):
            raise ValueError("send exactly one of `code` and `recovery_code`")
        return self


class SecondFactorRequired(BaseModel):
    detail: Literal["Second factor required"]
    mfa_token: str = Field(description="for `POST /users/login/mfa`, within 5 minutes, once")
    methods: list[Literal["totp", "recovery_code"]]


class DataExport(BaseModel):
    profile: AccountOut
    cart: list[CartLine]
    history: list[View]
    favourites: list[int]
    preferences: Preferences
    sessions: list[SessionInfo]
    totp_enabled: bool = Field(description="a TOTP second factor is on (its secret and recovery codes are never shown)")
    passkeys: list[PasskeyInfo]
