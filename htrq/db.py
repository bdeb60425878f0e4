"""Engine, sessions and migrations for PostgreSQL (the service) and SQLite (``htrq transcribe``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

import migrations

# __path__, not __file__: an editable install may present the folder as a namespace package.
MIGRATIONS_DIR = Path(next(iter(migrations.__path__)))


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; on SQLite, turn on foreign keys and wait on locks instead of failing."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # pre_ping: a worker outlives database restarts; a dead pooled connection is replaced
    # instead of failing the next batch.
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: results are read after the transaction that wrote them.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with sessions() as session, session.begin():
        yield session


@contextmanager
def read_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads that each need no snapshot beyond their own statement: on its own
    connection it runs outside a transaction (autocommit), which spares the BEGIN and the
    ROLLBACK round trips of a transaction. A session bound to a connection that is already
    in a transaction (the tests' savepoints) reads inside it."""
    with sessions() as session:
        if isinstance(session.get_bind(), Engine):
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def _alembic(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not a main option: ConfigParser would choke on "%" in passwords.
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations to ``url`` (both PostgreSQL and SQLite).

    The embedded SQLite database of ``htrq transcribe`` is migrated too, rather than built with
    ``create_all``, so that one schema, constraints included, is what every command runs on.
    """
    from alembic import command

    command.upgrade(_alembic(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(_alembic(url), revision)
