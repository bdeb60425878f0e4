"""Service processes for end-to-end tests: ``htrq worker`` and ``htrq api`` in their own
process groups, with the run's settings, and waits that fail with the process's log.

The benches start their services with the same helpers (``bench/scratch.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from htrq.settings import Settings

HTRQ = str(Path(sys.executable).parent / "htrq")
#: Generous bound for a busy 2-core machine; the tests finish far sooner when it is idle.
#: ``HTRQ_TEST_DEADLINE`` raises it where other work holds the cores (a worker's pool process
#: took 7 minutes to load the tiny model beside a training run).
DEADLINE = float(os.environ.get("HTRQ_TEST_DEADLINE", "180"))


def htrq_free_env() -> dict[str, str]:
    """This process's environment without any ``HTRQ_*`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HTRQ_")}


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment in which a child process loads exactly ``settings`` (and ``extra``)."""
    env = htrq_free_env()
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"HTRQ_{name.upper()}"] = str(value)
    env.update(extra)
    return env


def service_env(settings: Settings) -> dict[str, str]:
    # One thread per process: the worker shares two cores with the test and the API.
    return settings_env(
        settings, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TRANSFORMERS_VERBOSITY="error"
    )


def start_service(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``htrq ARGS`` in a process group of its own (so that a signal reaches its pool
    processes too), its output in ``log``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [HTRQ, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


class Processes:
    """Start service processes in their own process groups; kill what is left at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        proc = start_service(args, env, log)
        self.procs.append(proc)
        return proc, log

    def worker(self, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        proc, log = self.start(name, ["worker", "--loglevel=info", f"--hostname={name}@%h"], env)
        wait_for(lambda: b" ready." in log.read_bytes(), f"{name} to start", proc, log)
        return proc, log

    def api(self, env: dict[str, str], name: str = "api") -> str:
        port = free_port()
        proc, log = self.start(name, ["api", "--port", str(port), "--loglevel=warning"], env)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, "the API to answer", proc, log)
        return url

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        stop_group(proc, sig)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the process group of ``proc`` (started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # A process that ignores SIGTERM (stuck in a batch) must not outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(
    ready: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval: float = 0.2,
    timeout: float = DEADLINE,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"process exited with {proc.returncode} waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def poll_job(
    url: str, job_id: str, headers: dict[str, str] | None = None, timeout: float = DEADLINE
) -> dict[str, Any]:
    """The job's resource once it has finished (succeeded, failed or partial)."""
    job: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal job
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        return job["status"] in ("succeeded", "failed", "partial")

    wait_for(finished, f"job {job_id} to finish", interval=0.5, timeout=timeout)
    return job
