"""Alembic environment: runs migrations on the URL that ``migrations.upgrade`` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from htrq.db import make_engine
from htrq.models import Base

#: Key of the PostgreSQL advisory lock that serialises concurrent ``htrq migrate`` runs.
MIGRATION_LOCK_KEY = 0x6874_7271  # "htrq"
#: Give up instead of queueing behind a long transaction that holds a table lock.
LOCK_TIMEOUT = "10s"


def run_migrations_online() -> None:
    config = context.config
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: run migrations with `htrq migrate`")
    engine = make_engine(url)
    with engine.connect() as connection:
        is_pg = connection.dialect.name == "postgresql"
        if is_pg:
            connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if is_pg:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
