"""The PostgreSQL schema: Alembic's migrations (alembic.ini, migrations/) applied under a
transaction-level advisory lock, at every start-up and by ``python -m store.pg_tools migrate``,
so hosts starting together do not race; a database at a revision this code does not know (a newer
release migrated it) is refused.
"""

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .records import StoreError

ROOT = Path(__file__).resolve().parent.parent  # the project: alembic.ini and migrations/
MIGRATION_LOCK = 0x6661726D617574  # pg_advisory_xact_lock key of the migrations ("farmaut")
CONNECT_TIMEOUT = 3.0


def redact(url: str) -> str:
    """``url`` without its password (``***``), fit for a log line or an error message."""
    try:
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        query = "" if "password" in parts.query.lower() else parts.query
        return urlunsplit((parts.scheme, f"{userinfo}{at}{hostport}", parts.path, query, ""))
    except ValueError:
        return "(an unparseable DATABASE_URL)"


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy (Alembic) with the psycopg 3 driver."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]




def migrate(url: str) -> str | None:
    """Upgrade the database to the newest revision, under an advisory lock; the revision it was
    at. Raises ``StoreError`` for a revision this code does not know."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool, text

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    script = ScriptDirectory.from_config(config)
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool,
                           connect_args={"connect_timeout": int(CONNECT_TIMEOUT)})
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in {r.revision for r in script.walk_revisions()}:
                raise StoreError(f"the database at {redact(url)} is at schema revision {current!r}, which this "
                                 f"version of the service does not know (a newer version migrated it); run that "
                                 f"version, or restore a backup taken before it (known: up to {script.get_current_head()!r})")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        return current
    finally:
        engine.dispose()
