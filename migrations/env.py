"""Alembic's environment: migrations run on a connection ``store.pg_schema.migrate`` hands over (inside
its transaction, under its advisory lock); run by hand (``alembic upgrade head``), on one made
from ``DATABASE_URL``. Plain SQL migrations: there are no SQLAlchemy models to compare against."""

from alembic import context
from sqlalchemy import create_engine, pool

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    from store.pg_schema import sqlalchemy_url  # only when run by the alembic command
    from store.pg_tools import database_url_from_environment

    url = database_url_from_environment()
    if url is None:
        raise SystemExit("DATABASE_URL is not set")
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
