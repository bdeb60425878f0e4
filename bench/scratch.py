"""What the service benches share: a throwaway database and broker, the CPU time of a
process group, and the tests' helpers that start ``htrq`` services (``tests/services.py``).
Imported by the scripts beside it (``python bench/X.py`` puts ``bench/`` on the path; the
repository's root is put there below, for ``tests``)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis

# tests/services.py starts `htrq` service processes for the tests and for these benches.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from htrq import jobs
from htrq.db import make_engine, make_sessions
from htrq.queue import CelerySender, make_celery
from htrq.settings import Settings, load_settings
from htrq.storage import open_store
from migrations import upgrade
from tests.services import htrq_free_env, settings_env, start_service

__all__ = [
    "WorkerBench",
    "group_cpu_seconds",
    "htrq_free_env",
    "scratch_database",
    "scratch_service",
    "settings_env",
    "start_service",
    "worker_arguments",
]


@contextmanager
def scratch_database(admin_url: str, broker_url: str) -> Iterator[str]:
    """A new database on ``admin_url``'s server for one bench run, as a SQLAlchemy URL,
    dropped afterwards whatever happened; ``broker_url``'s Redis database is flushed first, so
    that only this benchmark's messages are in it."""
    redis.Redis.from_url(broker_url).flushdb()
    db = f"htrq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{db}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def group_cpu_seconds(pgid: int) -> float:
    """CPU time used so far by the live processes of a process group (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def worker_arguments(
    p: argparse.ArgumentParser, *, flush_every: int, num_beams: int, timeout: float
) -> None:
    """The options of a worker bench: the worker's model and reading settings, the servers."""
    p.add_argument("--model", default="builtin", help="a model setting, or 'tiny' (random)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--flush-every", type=int, default=flush_every, help="pages per group")
    p.add_argument("--num-beams", type=int, default=num_beams)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="HTRQ_TORCH_THREADS of the worker (0: its cores); 1 on a machine others load",
    )
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--timeout", type=float, default=timeout)


@contextmanager
def scratch_service(args: argparse.Namespace, **settings: Any) -> Iterator[Settings]:
    """Settings for one bench run (``args`` of :func:`worker_arguments`, then ``settings``)
    on a scratch database (migrated) and a scratch blob folder; the model ``tiny`` is built
    there (small and random: for the service's own costs)."""
    model = args.model
    with (
        scratch_database(args.admin_url, args.broker_url) as database_url,
        tempfile.TemporaryDirectory(prefix="htrq-bench-") as tmp,
    ):
        if model == "tiny":
            from worker.training.build import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        upgrade(database_url)
        yield load_settings(
            database_url=database_url,
            broker_url=args.broker_url,
            storage_dir=Path(tmp) / "blobs",
            model=model,
            batch_size=args.batch_size,
            flush_every=args.flush_every,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            torch_threads=args.torch_threads,
            **settings,
        )


class WorkerBench:
    """A real ``htrq worker`` process (its log in ``log``) and job submits through the job
    service, as the API makes them."""

    def __init__(self, settings: Settings, log: Path) -> None:
        assert settings.database_url
        self.settings, self.log = settings, log
        env = settings_env(settings, TRANSFORMERS_VERBOSITY="error")
        self.worker = start_service(["worker", "--loglevel=info"], env, log)
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessions(self.engine)
        self.sender = CelerySender(make_celery(settings))
        self.storage = open_store(settings)

    def submit(self, tenant: uuid.UUID, pages: Sequence[bytes], **options: Any) -> uuid.UUID:
        """One job of one-line pages for ``tenant``; ``options`` go to ``jobs.submit``."""
        uploads = [jobs.Upload(f"{i}.png", d) for i, d in enumerate(pages)]
        job, _ = jobs.submit(
            sessions=self.sessions, storage=self.storage, send=self.sender,
            settings=self.settings, tenant_id=tenant, uploads=uploads, mode="line", **options,
        )  # fmt: skip
        return job.id

    def close(self) -> None:
        os.killpg(self.worker.pid, signal.SIGTERM)
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # still in a long group (a loaded machine)
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=60)
        self.engine.dispose()
