"""Pooled connections outlive a database restart: the server ending a connection costs at most
the one statement that was already on it, never the requests after it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from htrq.db import make_engine


def _kill_backend(engine: Engine, pid: int) -> None:
    """What a server restart does to a pooled connection: ends it from the server side."""
    with engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def _pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)


def test_a_connection_idle_past_the_threshold_is_pinged_and_replaced(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0, ping_after_idle=0.2)
    other = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        first = _pid(engine)
        _kill_backend(other, first)
        time.sleep(0.3)  # idle past the threshold: the checkout pings, finds it dead, reconnects
        second = _pid(engine)
        assert second != first
    finally:
        engine.dispose()
        other.dispose()


def test_a_connection_used_moments_ago_is_not_pinged_and_one_failure_renews_the_pool(
    database_url: str,
) -> None:
    """Inside the threshold nothing is pinged (the round trip that cost a fifth of a status
    poll): the dead connection fails its statement once, SQLAlchemy invalidates the pool, and
    the next checkout reconnects."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0, ping_after_idle=3600)
    other = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        first = _pid(engine)
        _kill_backend(other, first)
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.scalar(text("SELECT 1"))
        assert _pid(engine) != first
    finally:
        engine.dispose()
        other.dispose()
