"""Look-alike usernames (issue #18): ``username_keys``, every account's look-alike keys, unique.

A key (``usernames.lookalike_keys``: UTS #39 skeletons of a name, with the folds the data misses)
belongs to one account: ``add_user`` inserts the new name's keys in its transaction, and a key
another account holds refuses it (``UsernameTaken``), with one winner under concurrency and no
scan. Deleting an account frees its keys (``ON DELETE CASCADE``).

The backfill computes the keys of the accounts already there with the service's own function (in
Python: PostgreSQL has no confusables data), in batches, ``ON CONFLICT DO NOTHING``: accounts that
already look alike keep working; the first by id holds the shared key. A later change of the key
function (e.g. a newer ICU's data) needs a migration that recomputes them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from itertools import islice

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    from usernames import lookalike_keys  # the service's own rule, from the repository's root

    op.execute("""
    CREATE TABLE username_keys (
        key text COLLATE "C" PRIMARY KEY,
        user_id text NOT NULL REFERENCES users(id) ON DELETE CASCADE
    )""")
    op.execute("CREATE INDEX username_keys_user_id ON username_keys (user_id)")  # the cascade's lookup
    conn = op.get_bind()
    rows = iter(conn.execute(sa.text("SELECT id, username FROM users ORDER BY id")).all())
    insert = sa.text("INSERT INTO username_keys (key, user_id) VALUES (:key, :user_id) ON CONFLICT DO NOTHING")
    while batch := list(islice(rows, BATCH)):
        # sorted: the same order on every run, so a shared key goes to the same account
        conn.execute(insert, [{"key": k, "user_id": user_id} for user_id, username in batch
                              for k in sorted(lookalike_keys(username))])


def downgrade() -> None:
    op.execute("DROP TABLE username_keys")
