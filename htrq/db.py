"""Engine and sessions for PostgreSQL (the service) and SQLite (``htrq transcribe``).

The schema is made by the Alembic migrations (``migrations.upgrade``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

#: A pooled connection that sat idle longer than this is pinged before it is used.
PING_AFTER_IDLE_S = 5.0


def make_engine(url: str, *, ping_after_idle: float = PING_AFTER_IDLE_S, **kwargs: Any) -> Engine:
    """Create an engine; on SQLite, turn on foreign keys and wait on locks instead of failing."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, **kwargs)
    _ping_after_idle(engine, ping_after_idle)
    return engine


def _ping_after_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection before use when it sat idle ``idle_s`` or longer, and replace
    it if the server is gone.

    Workers and the API outlive database restarts, so a dead pooled connection must be
    replaced rather than fail the next batch or request. SQLAlchemy's ``pool_pre_ping`` does
    that with a round trip on *every* checkout: a fifth of the API's wall-clock samples per
    status poll under load (py-spy, ``bench/api_load.py``; time waited on the database, not
    the API's own CPU, which did not change measurably). A connection used moments ago needs no such
    check; if the server died in between, the query fails once with a disconnect error and
    SQLAlchemy then invalidates every connection of the pool, so the next ones reconnect.
    Raising ``DisconnectionError`` in a checkout makes the pool retry with a new connection
    (the pattern of SQLAlchemy's "custom pessimistic ping").
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return  # new, or used moments ago
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_conn, None):
                raise DisconnectionError(str(err)) from err
            raise


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: results are read after the transaction that wrote them.
    return sessionmaker(engine, expire_on_commit=False)


def check_database(sessions: sessionmaker[Session]) -> None:
    """Run a trivial query: raises whatever the driver raises when the database is down."""
    with sessions() as session:
        session.execute(text("SELECT 1"))


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


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. ``Session.execute`` types every result as a
    ``Result``; a DML statement's is a ``CursorResult``, which counts them."""
    assert isinstance(result, CursorResult)
    return result.rowcount
