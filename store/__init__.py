"""What the service keeps: accounts, login sessions, throttling counters, anonymous visitors, and
what any owner keeps (cart, browsing history, favourites, preferences).

Routes talk to the async ``Store`` protocol only, and ``build_store`` picks the backend from the
settings. The package, one idea a module:

- ``records``: the records the store keeps and answers (``User``, the one account record whose
  fields drive both backends, the export and ``import-json``) and the errors it raises;
- ``protocol``: the ``Store`` protocol, one part per aggregate (accounts, sessions, throttling,
  visitors, personal data); what a third backend must do, checked by tests/test_store_contract.py;
- ``rules``: the rules both backends share, as plain functions (lockout arithmetic, history
  merges and limits);
- ``json_audit`` / ``pg_audit``: the audit log of each backend (a file a day beside the store; a table);
- ``json_store`` + ``json_visitors``: ``JsonStore``, the default, on ``journal.JournaledTables``
- ``json_store`` + ``json_visitors`` + ``json_factors`` (passkeys, second factors): ``JsonStore``, the default, on ``journal.JournaledTables``
  (``users.json`` and its journal);
- ``pg_base`` (pool, caches kept true by ``LISTEN``/``NOTIFY``, transactions), ``pg_store`` +
  ``pg_visitors`` + ``pg_factors`` (the SQL), ``pg_schema`` (Alembic migrations at start-up) and ``pg_tools``
  (the operator's ``python -m store.pg_tools migrate|import-json``): ``PostgresStore``, when
  ``DATABASE_URL`` is set.

Nothing here imports a backend it does not run: the PostgreSQL modules load only with
``DATABASE_URL``, and no module imports back into this one's package initialiser.
"""

from typing import TYPE_CHECKING

from .json_store import JsonStore
from .protocol import (
    AccountStore,
    AuditStore,
    FactorStore,
    Lifecycle,
    PersonalStore,
    SessionStore,
    Store,
    ThrottleStore,
    VisitorStore,
)
from .records import (
    USER_FIELDS,
    Attempt,
    AuditEvent,
    ChallengeRequired,
    Device,
    Failures,
    Lockout,
    MfaTicket,
    Passkey,
    Personal,
    RateLimited,
    Rotation,
    SessionView,
    StoreError,
    StoreUnavailable,
    UnknownOwner,
    User,
    UsernameTaken,
    Visitor,
    WebAuthnChallenge,
    public_profile,
)
from .rules import MAX_FAVOURITES, MAX_HISTORY, client_key

if TYPE_CHECKING:
    from settings import Settings

__all__ = ["MAX_FAVOURITES", "MAX_HISTORY", "USER_FIELDS", "AccountStore", "Attempt", "AuditEvent", "AuditStore",
           "ChallengeRequired", "Device", "FactorStore", "Failures", "JsonStore", "Lifecycle", "Lockout", "MfaTicket",
           "Passkey", "Personal", "PersonalStore", "RateLimited", "Rotation", "SessionStore", "SessionView", "Store",
           "StoreError", "StoreUnavailable", "ThrottleStore", "UnknownOwner", "User", "UsernameTaken", "Visitor",
           "VisitorStore", "WebAuthnChallenge", "build_store", "client_key", "public_profile"]


def build_store(settings: "Settings") -> Store:
    """The backend the settings ask for: the JSON file, or PostgreSQL when ``DATABASE_URL`` is set."""
    if settings.database_url is None:
        return JsonStore(settings.users_file)
    from .pg_store import PostgresStore  # imported only when used: the JSON default needs no driver

    return PostgresStore(settings.database_url.get_secret_value(), settings.database_pool_size,
                         settings.database_startup_timeout_seconds)
