"""Shared fixtures: a fresh PostgreSQL database per run, a flushed Redis db, a tiny model.

Nothing here is mocked: tests run against the real database, broker and model code.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import Engine, delete, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import make_engine
from htrq.models import Base
from htrq.settings import Settings
from migrations import upgrade
from tests.services import Processes, free_port, stop_group, wait_for

if TYPE_CHECKING:
    from worker.recognition.recognizer import Recognizer

#: A PostgreSQL server (any database on it) where each run creates and drops its own database.
PG_ADMIN_URL = os.environ.get(
    "HTRQ_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
).replace("postgresql+psycopg://", "postgresql://", 1)


def _redis_url() -> str:
    """A Redis database the tests may flush: db 13, or under pytest-xdist (``-n N``) db 13 +
    the worker's number, so that workers running side by side never flush each other's.
    Databases below 13 are left alone: db 0 is the service's own broker by default."""
    base = os.environ.get("HTRQ_TEST_BROKER_URL", "redis://127.0.0.1:6379/13")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # set by xdist in its workers
    n = int(worker.removeprefix("gw") or 0)
    if n == 0:
        return base
    root, _, last = base.rpartition("/")
    root, db = (root, int(last)) if last.isdigit() else (base.rstrip("/"), 0)
    if db + n > 15:
        raise pytest.UsageError(f"pytest -n: at most {16 - db} workers (Redis dbs {db}-15)")
    return f"{root}/{db + n}"


REDIS_URL = _redis_url()
#: Credentials for the test S3 server, which accepts any. ``s3_url`` puts them in the
#: environment, where boto3's standard chain finds them (in service processes too).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "htrq-test-key",
    "AWS_SECRET_ACCESS_KEY": "htrq-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


#: Fixtures that start a process (service processes, moto's S3 server): every test that uses
#: one, directly or through another fixture, is marked ``slow``.
PROCESS_FIXTURES = frozenset({"processes", "s3_server"})
TESTS_DIR = Path(__file__).resolve().parent
#: Code that is neither the tests' nor htrq's: the standard library and installed packages.
_LIBRARY_DIRS = tuple(
    {str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("stdlib", "purelib", "platlib")}
)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _started_by_the_tests() -> bool:
    """Whether the ``Popen`` being made was asked for by test code (a test, a fixture, a
    helper under ``tests/``), not by htrq (the PDF render helper) or a library."""
    frame = sys._getframe(2)
    while frame is not None:
        name = str(Path(frame.f_code.co_filename).resolve())
        if not name.startswith(_LIBRARY_DIRS):
            return name.startswith(str(TESTS_DIR))
        frame = frame.f_back
    return False


@pytest.fixture(autouse=True)
def processes_only_in_slow_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test that starts a process without the ``slow`` marker fails, saying so: the fast
    subset (``-m "not slow"``) must stay fast."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    started: list[object] = []
    original = subprocess.Popen.__init__

    def init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if _started_by_the_tests():
            started.append(args)
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", init)
    yield
    if started:
        pytest.fail(f"this test starts processes ({started!r}) but is not marked slow")


def _test_database_name() -> str:
    """``htrq_test_<pid>_<random>``: the pid tells a later run whether its owner is gone."""
    return f"htrq_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _drop_abandoned(conn: psycopg.Connection) -> None:
    """Drop test databases whose run was interrupted (its process is gone); those of runs
    still going, beside this one, stay."""
    names = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'htrq\\_test\\_%'"
    ).fetchall()
    for (name,) in names:
        parts = name.split("_")
        if len(parts) == 4 and parts[2].isdigit() and not Path(f"/proc/{parts[2]}").exists():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HTRQ_* variable of the developer's shell reaches a test (HTRQ_TEST_* excepted):
    settings are what each test builds."""
    for name in list(os.environ):
        if name.startswith("HTRQ_") and not name.startswith("HTRQ_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def process_state_restored() -> Iterator[None]:
    """What ``htrq.cli.main`` changes in the process it runs in, put back after each test
    that calls it in-process: SIGPIPE back to Python's ignored (after ``main`` a write to a
    closed socket would kill the whole run instead of raising), and the loggers' levels
    (``htrq transcribe`` silences ``worker.serving.batch``)."""
    sigpipe = signal.getsignal(signal.SIGPIPE)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    levels = {lg: lg.level for lg in loggers if isinstance(lg, logging.Logger)}
    yield
    signal.signal(signal.SIGPIPE, sigpipe)
    # Only loggers whose level changed: each setLevel clears every logger's cache, and with
    # transformers loaded there are thousands, so setting them all cost 0.2 s per test.
    for lg, level in levels.items():
        if lg.level != level:
            lg.setLevel(level)
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        # Made during the test: ours start at NOTSET, whatever the test set them to.
        ours = name.split(".")[0] in ("htrq", "worker", "api")
        if ours and isinstance(lg, logging.Logger) and lg not in levels and lg.level:
            lg.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Torch's global generator starts each test from the same seed (pytest-randomly does the
    same for ``random`` and numpy), so what a test draws does not depend on which tests ran
    before it. Torch is not imported for that: a test that never loads it pays nothing."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(20251)


def _new_database() -> Iterator[str]:
    """The URL of an empty PostgreSQL database made for the caller, dropped when it is done."""
    name = _test_database_name()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        _drop_abandoned(conn)
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped after it."""
    yield from _new_database()


@pytest.fixture
def scratch_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database for one test (migrations up and down), then dropped."""
    yield from _new_database()


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


@pytest.fixture(scope="session")
def seed_rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """What the migrations put in the run's database (the ``default`` tenant), by table."""
    with engine.connect() as conn:
        return {
            t.name: [dict(r._mapping) for r in conn.execute(select(t))]
            for t in Base.metadata.sorted_tables
        }


@pytest.fixture(autouse=True)
def leaves_the_database_as_it_found_it(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the run's database, its tables hold what the migrations put
    there and nothing else.

    Tests that work through ``sessions`` leave nothing anyway (their transaction is rolled
    back); this is for what the code under test commits on its own connections: the API app,
    service functions, CLI commands, worker processes. Set up before (so torn down after)
    every fixture the test uses, service processes included.
    """
    if "database_url" not in request.fixturenames:
        yield
        return
    engine: Engine = request.getfixturevalue("engine")
    seeds: dict[str, list[dict[str, Any]]] = request.getfixturevalue("seed_rows")
    yield
    with engine.begin() as conn:
        # A connection left inside a transaction (a leaked session) must fail the run, not
        # hang it.
        conn.execute(text("SET LOCAL lock_timeout = '30s'"))
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
        for table in Base.metadata.sorted_tables:
            if seeds[table.name]:
                conn.execute(insert(table), seeds[table.name])


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
    import torch

    from worker.training.build import build_tiny_model

    # Seeded: its weights (and so what it reads) must not depend on which tests ran first.
    torch.manual_seed(1234)
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
    from worker.recognition.recognizer import Recognizer

    return Recognizer.load(model=str(tiny_model), batch_size=8, num_beams=1, max_new_tokens=6)


@pytest.fixture
def settings(database_url: str, broker_url: str, tiny_model: Path, tmp_path: Path) -> Settings:
    """Settings for one test: the run's database, a Redis db flushed for it, a private blob
    dir, the tiny model."""
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
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


@dataclass(frozen=True)
class S3Server:
    """A running S3-protocol server and the bucket the tests use on it."""

    endpoint_url: str
    bucket: str

    def client(self) -> Any:
        """A boto3 client on the server, to look at the bucket from outside the code."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint_url)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix``, by name."""
        client = self.client()
        listing = client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return {
            o["Key"]: client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
            for o in listing.get("Contents", [])
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server, a real process on a free port, with one bucket."""
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(f"http://127.0.0.1:{port}", "htrq-test")

    def up() -> bool:
        try:
            httpx.get(server.endpoint_url, timeout=1)
        except httpx.HTTPError:
            return False
        return True

    try:
        wait_for(up, "the S3 server to answer", proc, log)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        stop_group(proc)  # SIGTERM, SIGKILL if it is still there 30 s later


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://`` URL of a prefix of its own in the test bucket; the server's credentials in
    the environment, and nothing of the developer's AWS setup."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_settings(settings: Settings, s3_url: str, s3_server: S3Server) -> Settings:
    """``settings`` with blobs in the test bucket instead of a directory."""
    return settings.model_copy(
        update={"storage_url": s3_url, "s3_endpoint_url": s3_server.endpoint_url}
    )


@pytest.fixture
def unreachable_s3_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``settings`` with blobs on an S3 endpoint where nothing listens (a store that is down)."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return settings.model_copy(
        update={
            "storage_url": "s3://htrq-test/blobs",
            "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
        }
    )
