"""The operator's tools for the PostgreSQL backend, on ``DATABASE_URL`` (from the environment or
``.env``): ``python -m store.pg_tools migrate`` (``make migrate``), and ``python -m store.pg_tools
import-json PATH`` (``make import-json``): a JSON store, the book's format included, copied in
idempotently in one transaction, accounts by the account record's fields.
"""

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncpg

from models import normalize_username
from usernames import lookalike_keys

from .json_factors import _passkey as _json_passkey
from .pg_base import ALL, CHANNEL, TABLES, _init_connection, _nul_free, _owner
from .pg_factors import PASSKEY_COLUMNS
from .pg_schema import CONNECT_TIMEOUT, migrate, redact
from .pg_store import PostgresStore
from .pg_visitors import _put_history
from .records import USER_FIELDS, StoreError, user_doc, user_from_doc


def database_url_from_environment() -> str | None:
    """``DATABASE_URL`` from the environment or ``.env``, as the service reads it (the tools need
    none of the service's other settings)."""
    from pydantic import SecretStr
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class DatabaseSettings(BaseSettings):
        model_config = SettingsConfigDict(env_file=".env", extra="ignore")
        database_url: SecretStr | None = None

    secret = DatabaseSettings().database_url
    return secret.get_secret_value() if secret else None


# -- migrations (blocking: psycopg through SQLAlchemy, run in a thread) ---------------------------

async def truncate_all(url: str) -> None:
    """Empty every table (tests; never run by the service). Running services drop their caches."""
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}; SELECT pg_notify('{CHANNEL}', '{ALL}')")
    finally:
        await conn.close()


async def import_json(url: str, path: Path) -> dict[str, int]:
    """Copy the JSON store at ``path`` (``users.json``, its journal if a crash left one, the book's
    format included) into the database, in one transaction; rows are upserted by their keys, so
    importing the same store twice leaves the same database. The counts of rows written per table;
    ``skipped`` counts rows whose owner is not in the store, or an account whose normalised name
    another account in the database already has."""
    from store import JsonStore

    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    source = JsonStore(path)
    await source.open()
    try:
        tables = source.t
        counts = dict.fromkeys(("users", "anonymous", "sessions", "cart_items", "history", "favourites", "preferences",
                                "login_failures", "anonymous_logins", "request_counts", "upgraded", "device_tokens",
                                "spent_challenges", "passkeys", "webauthn_challenges", "mfa_tokens", "totp_steps",
                                "recovery_codes", "audit_events", "skipped"), 0)
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
        await _init_connection(conn)
        try:
            async with conn.transaction():
                await _import_tables(conn, tables, counts)
                await _import_audit(conn, source, counts)
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, ALL)
        finally:
            await conn.close()
    finally:
        await source.close()
    return counts


async def _import_tables(conn: asyncpg.Connection, t: dict[str, dict[str, Any]], counts: dict[str, int]) -> None:
    # accounts in bulk (a store may hold 100,000 of them): COPY into a scratch table, then one upsert
    # the scratch table is the users table's shape, and the columns copied are the account record's
    await conn.execute("CREATE TEMP TABLE import_users (LIKE users INCLUDING DEFAULTS) ON COMMIT DROP")
    columns = ["name_key", *USER_FIELDS]
    await conn.copy_records_to_table("import_users", columns=columns, records=[
        (normalize_username(user.username), *user_doc(user).values())
        for user in (user_from_doc({**doc, "id": user_id}) for user_id, doc in t["users"].items())])
    clash = "EXISTS (SELECT 1 FROM users u WHERE u.name_key = i.name_key AND u.id <> i.id)"
    counts["skipped"] += await conn.fetchval(f"SELECT count(*) FROM import_users i WHERE {clash}")
    rows = await conn.fetch(
        f"INSERT INTO users ({', '.join(columns)}) SELECT {', '.join(columns)} FROM import_users i WHERE NOT {clash} "
        f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns if c != 'id')} RETURNING id")
    users = {r["id"] for r in rows}
    counts["users"] = len(users)
    await _import_keys(conn, t["users"], users)
    visitors: set[str] = set()
    for visitor_id, doc in t["anonymous"].items():
        await conn.execute(
            "INSERT INTO anonymous (id, created_at, last_active_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE "
            "SET created_at = excluded.created_at, last_active_at = excluded.last_active_at",
            visitor_id, doc["created_at"], doc["last_active_at"])
        visitors.add(visitor_id)
        counts["anonymous"] += 1
    owners = users | visitors
    for session_id, s in t["sessions"].items():
        if s["user_id"] not in users:
            counts["skipped"] += 1
            continue
        await conn.execute(
            "INSERT INTO sessions (id, user_id, jti, expires_at, created_at, prev_jti, rotated_at, last_used_at, client, "
            "user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET "
            "user_id = excluded.user_id, jti = excluded.jti, expires_at = excluded.expires_at, "
            "created_at = excluded.created_at, prev_jti = excluded.prev_jti, rotated_at = excluded.rotated_at, "
            "last_used_at = excluded.last_used_at, client = excluded.client, user_agent = excluded.user_agent",
            session_id, s["user_id"], s["jti"], s["expires_at"], s.get("created_at"), s.get("prev_jti"),
            s.get("rotated_at"), s.get("last_used_at"), s.get("client"), s.get("user_agent"))
        counts["sessions"] += 1
    for table in ("carts", "history", "favourites", "preferences"):
        for owner, value in t[table].items():
            if owner not in owners:
                counts["skipped"] += 1
                continue
            await _import_owned(conn, table, owner, value, counts)
    for key, doc in t["login_failures"].items():
        await conn.execute(
            "INSERT INTO login_failures (key, at, until, name_key) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (key) DO UPDATE SET at = excluded.at, until = excluded.until, name_key = excluded.name_key",
            _nul_free(key), [float(x) for x in doc.get("at", [])], doc["until"], doc.get("name"))
        counts["login_failures"] += 1
    for key, doc in t["devices"].items():  # of accounts that were imported
        status = await conn.execute(
            "INSERT INTO device_tokens (key, user_id, expires_at, at, created_at) "
            "SELECT $1, $2::text, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM users WHERE id = $2::text) "
            "ON CONFLICT (key) DO UPDATE SET user_id = excluded.user_id, expires_at = excluded.expires_at, "
            "at = excluded.at, created_at = excluded.created_at",
            key, str(doc["user_id"]), doc["expires_at"], [float(x) for x in doc.get("at", [])],
            doc.get("created_at", 0.0))
        counts["device_tokens" if status.endswith(" 1") else "skipped"] += 1
    await _import_factors(conn, t, users, counts)
    for key, doc in t["spent"].items():
        await conn.execute("INSERT INTO spent_challenges (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                           key, doc["expires_at"])
        counts["spent_challenges"] += 1
    for key, doc in t["anonymous_logins"].items():
        await conn.execute("INSERT INTO anonymous_logins (key, since, count) VALUES ($1, $2, $3) ON CONFLICT (key) "
                           "DO UPDATE SET since = excluded.since, count = excluded.count", key, doc["since"], doc["count"])
        counts["anonymous_logins"] += 1
    for key, doc in t["request_counts"].items():
        await conn.execute("INSERT INTO request_counts (key, count, expires_at) VALUES ($1, $2, $3) ON CONFLICT (key) "
                           "DO UPDATE SET count = excluded.count, expires_at = excluded.expires_at",
                           key, doc["count"], doc["expires_at"])
        counts["request_counts"] += 1
    for visitor_id, doc in t["upgraded"].items():
        if doc["user_id"] not in users:
            counts["skipped"] += 1
            continue
        await conn.execute("INSERT INTO upgraded (anonymous_id, user_id, at) VALUES ($1, $2, $3) ON CONFLICT "
                           "(anonymous_id) DO UPDATE SET user_id = excluded.user_id, at = excluded.at",
                           visitor_id, doc["user_id"], doc["at"])
        counts["upgraded"] += 1


async def _import_audit(conn: asyncpg.Connection, source: Any, counts: dict[str, int]) -> None:
    """The JSON store's audit log (its ``.audit`` directory), every event kept; ids are unique, so
    a second import adds nothing."""
    events = await source.list_audit(10**9)
    await conn.executemany(
        "INSERT INTO audit_events (id, at, type, user_id, username, client, user_agent, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        [(e.id, e.at, e.type, e.user_id, e.username, e.client, e.user_agent, e.detail) for e in events])
    counts["audit_events"] = len(events)


async def _import_factors(conn: asyncpg.Connection, t: dict[str, dict[str, Any]], users: set[str],
                          counts: dict[str, int]) -> None:
    """Passkeys, WebAuthn challenges, logins waiting for a second factor, TOTP steps and recovery
    codes (store/json_factors.py), of accounts that were imported."""
    for key, doc in t["passkeys"].items():
        if doc["user_id"] not in users:
            counts["skipped"] += 1
            continue
        p = _json_passkey(key, doc)
        await conn.execute(
            f"INSERT INTO passkeys ({PASSKEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) "
            "DO UPDATE SET user_id = excluded.user_id, credential_id = excluded.credential_id, "
            "public_key = excluded.public_key, sign_count = excluded.sign_count, name = excluded.name, "
            "created_at = excluded.created_at, last_used_at = excluded.last_used_at, transports = excluded.transports",
            p.id, p.user_id, p.credential_id, p.public_key, p.sign_count, p.name, p.created_at, p.last_used_at,
            list(p.transports))
        counts["passkeys"] += 1
    for key, doc in t["webauthn_challenges"].items():
        if doc.get("user_id") is not None and doc["user_id"] not in users:
            counts["skipped"] += 1
            continue
        await conn.execute("INSERT INTO webauthn_challenges (challenge, purpose, user_id, expires_at) "
                           "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", key, doc["purpose"], doc.get("user_id"),
                           doc["expires_at"])
        counts["webauthn_challenges"] += 1
    for key, doc in t["mfa_tokens"].items():
        if doc["user_id"] not in users:
            counts["skipped"] += 1
            continue
        await conn.execute(
            "INSERT INTO mfa_tokens (key, user_id, attempts_left, expires_at, at, name_key, device) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key) DO UPDATE SET "
            "attempts_left = excluded.attempts_left, expires_at = excluded.expires_at",
            key, doc["user_id"], doc["attempts_left"], doc["expires_at"], doc["at"], doc["name_key"], doc.get("device"))
        counts["mfa_tokens"] += 1
    for user_id, doc in t["totp_steps"].items():
        if user_id not in users:
            counts["skipped"] += 1
            continue
        await conn.execute("INSERT INTO totp_steps (user_id, step) VALUES ($1, $2) ON CONFLICT (user_id) "
                           "DO UPDATE SET step = greatest(totp_steps.step, excluded.step)", user_id, doc["step"])
        counts["totp_steps"] += 1
    for user_id, doc in t["recovery_codes"].items():
        if user_id not in users:
            counts["skipped"] += 1
            continue
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)
        await conn.execute("INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::text[]) "
                           "ON CONFLICT DO NOTHING", user_id, list(doc["hashes"]))
        counts["recovery_codes"] += len(doc["hashes"])


async def _import_keys(conn: asyncpg.Connection, docs: dict[str, Any], users: set[str]) -> None:
    """The look-alike keys of the imported accounts: keys of a name they no longer have go; a key
    another account holds stays its (accounts that looked alike before the rule keep working)."""
    await conn.execute('CREATE TEMP TABLE import_keys (key text COLLATE "C", user_id text) ON COMMIT DROP')
    await conn.copy_records_to_table("import_keys", records=[
        (k, user_id) for user_id in sorted(users) for k in sorted(lookalike_keys(docs[user_id]["username"]))])
    await conn.execute("DELETE FROM username_keys k WHERE k.user_id = ANY($1::text[]) AND NOT EXISTS "
                       "(SELECT 1 FROM import_keys i WHERE i.key = k.key AND i.user_id = k.user_id)", list(users))
    await conn.execute("INSERT INTO username_keys (key, user_id) SELECT key, user_id FROM import_keys "
                       "ORDER BY user_id, key ON CONFLICT DO NOTHING")


async def _import_owned(conn: asyncpg.Connection, table: str, owner: str, value: Any, counts: dict[str, int]) -> None:
    """One owner's cart, history, favourites or preferences, replacing what the database has."""
    ids = _owner(owner)
    if table == "carts":
        await conn.execute("DELETE FROM cart_items WHERE owner = $1", owner)
        await conn.executemany("INSERT INTO cart_items (owner, user_id, anonymous_id, item_id, quantity) "
                               "VALUES ($1, $2, $3, $4, $5)", [(*ids, int(i), q) for i, q in value.items()])
        counts["cart_items"] += len(value)
    elif table == "history":
        await _put_history(conn, owner, value.get("items", []), value.get("cleared_at"))
        counts["history"] += 1
    elif table == "favourites":
        await conn.execute("DELETE FROM favourites WHERE owner = $1", owner)
        await conn.executemany("INSERT INTO favourites (owner, user_id, anonymous_id, item_id) VALUES ($1, $2, $3, $4)",
                               [(*ids, int(i)) for i in value])
        counts["favourites"] += len(value)
    else:
        await conn.execute("INSERT INTO preferences (owner, user_id, anonymous_id, prefs) VALUES ($1, $2, $3, $4) "
                           "ON CONFLICT (owner) DO UPDATE SET prefs = excluded.prefs", *ids, value)
        counts["preferences"] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.pg_tools", description="The PostgreSQL store's tools.")
    parser.add_argument("--database-url", help="default: DATABASE_URL (environment or .env)")
    commands = parser.add_subparsers(dest="command", required=True)
    migrator = commands.add_parser("migrate", help="upgrade the schema to the newest revision")
    importer = commands.add_parser("import-json", help="copy a JSON store (users.json) in, idempotently")
    importer.add_argument("path", type=Path)
    for command in (migrator, importer):  # before or after the command
        command.add_argument("--database-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    url = args.database_url or database_url_from_environment()
    if not url:
        print("DATABASE_URL is not set (or pass --database-url)", file=sys.stderr)
        return 3
    try:
        if args.command == "migrate":
            asyncio.run(PostgresStore(url, 1, 0)._wait_for_database())
            before = migrate(url)
            print(f"{redact(url)}: schema at the newest revision (it was at {before or 'none: an empty database'})")
        else:
            asyncio.run(PostgresStore(url, 1, 0)._wait_for_database())
            migrate(url)
            counts = asyncio.run(import_json(url, args.path))
            print(f"imported {args.path} into {redact(url)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (asyncpg.PostgresError, OSError) as exc:  # nothing was written: one transaction
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
