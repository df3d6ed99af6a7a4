"""Administrators, the audit log, and each user's view of their sessions (issue #20).

- ``users`` gains ``is_admin`` and ``disabled`` (false for every existing account), and
  ``created_at`` / ``last_login_at`` (NULL for existing accounts: not known).
- ``sessions`` gains ``last_used_at`` (the last login or refresh), ``client`` (the address as the
  service counts it) and ``user_agent`` (truncated): what ``GET /users/me/sessions`` shows.
- ``login_failures`` gains ``name_key`` (the keyed digest of the name a counter belongs to; a
  pair's key is a digest of name and address, so without it an administrator's unlock could not
  find a name's pairs). Rows counted before it stay until their window passes.
- ``audit_events``: the audit log (audit.py). No foreign key to ``users``: an account's events
  outlive its deletion until ``AUDIT_RETENTION_DAYS`` prunes them. ``id`` sorts by time, and is
  the paging cursor; ``(user_id, id)`` and ``(type, id)`` serve the filtered pages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN is_admin boolean NOT NULL DEFAULT false, "
               "ADD COLUMN disabled boolean NOT NULL DEFAULT false, "
               "ADD COLUMN created_at double precision, ADD COLUMN last_login_at double precision")
    op.execute("ALTER TABLE sessions ADD COLUMN last_used_at double precision, ADD COLUMN client text, "
               "ADD COLUMN user_agent text")
    op.execute("ALTER TABLE login_failures ADD COLUMN name_key text")
    op.execute("CREATE INDEX login_failures_name_key ON login_failures (name_key) WHERE name_key IS NOT NULL")
    op.execute("""
    CREATE TABLE audit_events (
        id text COLLATE "C" PRIMARY KEY,
        at double precision NOT NULL,
        type text NOT NULL,
        user_id text,
        username text,
        client text,
        user_agent text,
        detail jsonb NOT NULL DEFAULT '{}'
    )""")
    op.execute("CREATE INDEX audit_events_user_id ON audit_events (user_id, id)")
    op.execute("CREATE INDEX audit_events_type ON audit_events (type, id)")
    op.execute("CREATE INDEX audit_events_at ON audit_events (at)")  # the retention's prune


def downgrade() -> None:
    op.execute("DROP TABLE audit_events")
    op.execute("DROP INDEX login_failures_name_key")
    op.execute("ALTER TABLE login_failures DROP COLUMN name_key")
    op.execute("ALTER TABLE sessions DROP COLUMN last_used_at, DROP COLUMN client, DROP COLUMN user_agent")
    op.execute("ALTER TABLE users DROP COLUMN is_admin, DROP COLUMN disabled, DROP COLUMN created_at, "
               "DROP COLUMN last_login_at")
