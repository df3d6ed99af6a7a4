"""Passkeys and a TOTP second factor (issue #22).

``users`` gains ``totp_enabled`` and ``totp_secret`` (the TOTP secret, encrypted with a key
derived from the service's secret; set while not enabled: a setup waiting for its first code).
New tables, each cascading from ``users``:

- ``passkeys``: an account's WebAuthn credentials (the authenticator's credential id, unique over
  all accounts; its COSE public key; its signature counter; a name; when added and last used);
- ``webauthn_challenges``: each challenge handed out with WebAuthn options, until it is used once
  (``DELETE ... RETURNING``) or expires (pruned by ``expires_at``); ``user_id`` for a registration;
- ``mfa_tokens``: a password login waiting for its second factor, by a digest of its token, with
  the attempts left and the login attempt to take back once it completes (no client address);
- ``totp_steps``: the last TOTP time step accepted per account (a code works once);
- ``recovery_codes``: digests of an account's unused recovery codes.

Another migration (0004, administrators and the audit log) was written at the same time on another
branch; merged, this one follows it (``down_revision = "0004"``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN totp_enabled boolean NOT NULL DEFAULT false, "
               "ADD COLUMN totp_secret text")
    op.execute("""
    CREATE TABLE passkeys (
        id text PRIMARY KEY,
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        credential_id text COLLATE "C" NOT NULL UNIQUE,
        public_key bytea NOT NULL,
        sign_count bigint NOT NULL,
        name text NOT NULL,
        created_at double precision NOT NULL,
        last_used_at double precision,
        transports text[] NOT NULL DEFAULT '{}'
    )""")
    op.execute("CREATE INDEX passkeys_user_id ON passkeys (user_id)")
    op.execute("""
    CREATE TABLE webauthn_challenges (
        challenge text COLLATE "C" PRIMARY KEY,
        purpose text NOT NULL,
        user_id text REFERENCES users(id) ON DELETE CASCADE,
        expires_at double precision NOT NULL
    )""")
    op.execute("CREATE INDEX webauthn_challenges_expires_at ON webauthn_challenges (expires_at)")
    op.execute("CREATE INDEX webauthn_challenges_user_id ON webauthn_challenges (user_id)")
    op.execute("""
    CREATE TABLE mfa_tokens (
        key text PRIMARY KEY,
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        attempts_left integer NOT NULL,
        expires_at double precision NOT NULL,
        at double precision NOT NULL,
        name_key text NOT NULL,
        device text
    )""")
    op.execute("CREATE INDEX mfa_tokens_expires_at ON mfa_tokens (expires_at)")
    op.execute("CREATE INDEX mfa_tokens_user_id ON mfa_tokens (user_id)")
    op.execute("""
    CREATE TABLE totp_steps (
        user_id text PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        step bigint NOT NULL
    )""")
    op.execute("""
    CREATE TABLE recovery_codes (
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        hash text NOT NULL,
        PRIMARY KEY (user_id, hash)
    )""")


def downgrade() -> None:
    for table in ("recovery_codes", "totp_steps", "mfa_tokens", "webauthn_challenges", "passkeys"):
        op.execute(f"DROP TABLE {table}")
    op.execute("ALTER TABLE users DROP COLUMN totp_secret, DROP COLUMN totp_enabled")
