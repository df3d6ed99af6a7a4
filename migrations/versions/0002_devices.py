"""Known devices and spent proof-of-work solutions (trust.py).

``device_tokens`` keeps, per device token an account was given at login, a digest of the token's
random part (never the token), the account, its expiry and the device's own failed-login times;
deleting the account deletes them. ``spent_challenges`` remembers each proof-of-work solution
used, until the challenge expires, so none is accepted twice. The per-account lock rounds of
``login_failures`` (``round``, ``locked_until``) are no longer used: an account past its failure
limit asks for a challenge instead of locking; the columns are dropped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE device_tokens (
        key text PRIMARY KEY,
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        expires_at double precision NOT NULL,
        at double precision[] NOT NULL DEFAULT '{}',
        created_at double precision NOT NULL
    )""")
    op.execute("CREATE INDEX device_tokens_user_id ON device_tokens (user_id)")
    op.execute("CREATE INDEX device_tokens_expires_at ON device_tokens (expires_at)")
    op.execute("""
    CREATE TABLE spent_challenges (
        key text PRIMARY KEY,
        expires_at double precision NOT NULL
    )""")
    op.execute("CREATE INDEX spent_challenges_expires_at ON spent_challenges (expires_at)")
    op.execute("ALTER TABLE login_failures DROP COLUMN round, DROP COLUMN locked_until")


def downgrade() -> None:
    op.execute("ALTER TABLE login_failures ADD COLUMN round integer, ADD COLUMN locked_until double precision")
    op.execute("DROP TABLE spent_challenges")
    op.execute("DROP TABLE device_tokens")
