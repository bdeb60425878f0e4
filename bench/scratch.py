"""What the service benches share: a throwaway database and broker, the CPU time of a
process group, and the tests' helpers that start ``htrq`` services (``tests/services.py``).
Imported by the scripts beside it (``python bench/X.py`` puts ``bench/`` on the path; the
repository's root is put there below, for ``tests``)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis

# tests/services.py starts `htrq` service processes for the tests and for these benches.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import htrq_free_env, settings_env, start_service

__all__ = [
    "group_cpu_seconds",
    "htrq_free_env",
    "scratch_database",
    "settings_env",
    "start_service",
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
