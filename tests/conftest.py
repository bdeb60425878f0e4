"""Shared fixtures: a fresh PostgreSQL database per run, a flushed Redis db, a tiny model.

Nothing here is mocked: tests run against the real database, broker and model code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import make_engine, upgrade
from htrq.settings import Settings
from tests.services import Processes

if TYPE_CHECKING:
    from worker.recognize import Recognizer

#: A PostgreSQL server (any database on it) where each run creates and drops its own database.
PG_ADMIN_URL = os.environ.get(
    "HTRQ_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
).replace("postgresql+psycopg://", "postgresql://", 1)
#: A Redis database the tests may flush.
REDIS_URL = os.environ.get("HTRQ_TEST_BROKER_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped after it."""
    name = f"htrq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def scratch_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database for one test (migrations up and down), then dropped."""
    name = f"htrq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(pg_url: str) -> str:
    """The run's database with every migration applied."""
    upgrade(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions inside one outer transaction that is rolled back after the test.

    Each ``commit`` in the code under test releases a savepoint instead of committing.
    """
    with engine.connect() as conn:
        outer = conn.begin()
        yield sessionmaker(
            bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        outer.rollback()


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis database of its own, flushed before and after the test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()  # Flush beforewards (we like our hygiene)
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def processes(tmp_path: Path, broker_url: str) -> Iterator[Processes]:
    """Service processes for the test, each stopped (SIGTERM, then SIGKILL) at its end."""
    procs = Processes(tmp_path)
    yield procs
    procs.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random TrOCR-architecture model: right mechanics, meaningless words."""
    from worker.training.build import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session", params=["trocr-base", "trocr-small"])
def stock_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model of a stock TrOCR checkpoint's shape (``tests/stock_shapes.py``):
    ``trocr-base`` (ViT, RoBERTa BPE) and ``trocr-small`` (DeiT, XLM-R unigram)."""
    from tests.stock_shapes import build_trocr_base_like, build_trocr_small_like

    build = {"trocr-base": build_trocr_base_like, "trocr-small": build_trocr_small_like}
    return build[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def recognizer(tiny_model: Path) -> Recognizer:
    from worker.recognize import Recognizer

    return Recognizer.load(model=str(tiny_model), batch_size=8, num_beams=1, max_new_tokens=6)


@pytest.fixture
def settings(database_url: str, tiny_model: Path, tmp_path: Path) -> Settings:
    """Settings for one test: the run's database, a private blob dir, the tiny model."""
    return Settings(
        database_url=database_url,
        broker_url=REDIS_URL,
        storage_dir=tmp_path / "blobs",
        model=str(tiny_model),
        batch_size=8,
        num_beams=1,
        max_new_tokens=6,
        flush_every=4,
        flush_interval=0.3,
        lease_seconds=60,
        max_attempts=2,
        retry_backoff=0,
        sweep_interval=0.5,
        # Keys and tenants are tested on their own (test_tenancy.py); elsewhere every request
        # is the default tenant's, and callbacks may go to the test's own receiver.
        auth="off",
        webhook_allow_private=True,
        webhook_poll=0.2,
    )
