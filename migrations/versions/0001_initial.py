"""The JSON store's tables, in PostgreSQL.

Times are Unix seconds (``double precision``), as in the JSON store, so both backends compute the
same answers from the same code. Rows that belong to an owner (cart lines, history, favourites,
preferences) name it in ``owner`` and, for the foreign key, in exactly one of ``user_id`` (an
account) or ``anonymous_id`` (a visitor): deleting the account or purging the visitor deletes
them (``ON DELETE CASCADE``). ``users.name_key`` is the normalised username (models.py's
``normalize_username``, computed by the service), unique: one winner per name; ``COLLATE "C"``
orders it by code point, as the JSON store's sorted index does (``GET /users/list`` cursors).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

OWNER_COLUMNS = """
    owner text NOT NULL,
    user_id text REFERENCES users(id) ON DELETE CASCADE,
    anonymous_id text REFERENCES anonymous(id) ON DELETE CASCADE,
    CHECK (num_nonnulls(user_id, anonymous_id) = 1 AND owner = coalesce(user_id, anonymous_id))"""
OWNED = ("cart_items", "history", "favourites", "preferences")


def upgrade() -> None:
    op.execute("""
    CREATE TABLE users (
        id text PRIMARY KEY,
        username text NOT NULL,
        name_key text COLLATE "C" NOT NULL UNIQUE,
        password text NOT NULL
    )""")
    op.execute("""
    CREATE TABLE anonymous (
        id text PRIMARY KEY,
        created_at double precision NOT NULL,
        last_active_at double precision NOT NULL
    )""")
    op.execute("CREATE INDEX anonymous_last_active_at ON anonymous (last_active_at)")  # the purge
    op.execute(f"""
    CREATE TABLE cart_items ({OWNER_COLUMNS},
        item_id integer NOT NULL,
        quantity integer NOT NULL CHECK (quantity > 0),
        PRIMARY KEY (owner, item_id)
    )""")
    op.execute(f"""
    CREATE TABLE history ({OWNER_COLUMNS},
        items jsonb NOT NULL,
        cleared_at double precision,
        PRIMARY KEY (owner)
    )""")
    op.execute(f"""
    CREATE TABLE favourites ({OWNER_COLUMNS},
        item_id integer NOT NULL,
        PRIMARY KEY (owner, item_id)
    )""")
    op.execute(f"""
    CREATE TABLE preferences ({OWNER_COLUMNS},
        prefs jsonb NOT NULL,
        PRIMARY KEY (owner)
    )""")
    for table in OWNED:  # the cascades' lookups
        op.execute(f"CREATE INDEX {table}_user_id ON {table} (user_id) WHERE user_id IS NOT NULL")
        op.execute(f"CREATE INDEX {table}_anonymous_id ON {table} (anonymous_id) WHERE anonymous_id IS NOT NULL")
    op.execute("""
    CREATE TABLE sessions (
        id text PRIMARY KEY,
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        jti text NOT NULL,
        expires_at double precision NOT NULL,
        created_at double precision,
        prev_jti text,
        rotated_at double precision
    )""")
    op.execute("CREATE INDEX sessions_user_id ON sessions (user_id)")
    op.execute("CREATE INDEX sessions_expires_at ON sessions (expires_at)")  # the prune
    op.execute("""
    CREATE TABLE login_failures (
        key text PRIMARY KEY,
        at double precision[] NOT NULL DEFAULT '{}',
        round integer,
        locked_until double precision,
        until double precision NOT NULL
    )""")
    op.execute("CREATE INDEX login_failures_until ON login_failures (until)")
    op.execute("""
    CREATE TABLE anonymous_logins (
        key text PRIMARY KEY,
        since double precision NOT NULL,
        count integer NOT NULL
    )""")
    op.execute("CREATE INDEX anonymous_logins_since ON anonymous_logins (since)")
    op.execute("""
    CREATE TABLE request_counts (
        key text PRIMARY KEY,
        count bigint NOT NULL,
        expires_at double precision NOT NULL
    )""")
    op.execute("CREATE INDEX request_counts_expires_at ON request_counts (expires_at)")
    op.execute("""
    CREATE TABLE upgraded (
        anonymous_id text PRIMARY KEY,
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        at double precision NOT NULL
    )""")
    op.execute("CREATE INDEX upgraded_user_id ON upgraded (user_id)")
    op.execute("CREATE INDEX upgraded_at ON upgraded (at)")


def downgrade() -> None:
    for table in ("upgraded", "request_counts", "anonymous_logins", "login_failures", "sessions", *OWNED,
                  "anonymous", "users"):
        op.execute(f"DROP TABLE {table}")
