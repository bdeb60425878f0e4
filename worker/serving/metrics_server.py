"""The worker's metrics endpoint: its pool processes' metrics, merged, on one HTTP port.

prometheus_client decides when it is first imported whether metric values live in memory or
in files (multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR``). So the main ``htrq
worker`` process makes a fresh private directory and sets the variable before anything
imports prometheus_client (this module imports it only then); the pool processes, forked
later, inherit both and write their values there, and the main process merges the files at
each scrape. A new directory per start means a restarted worker never counts a previous
run's pages again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from htrq.settings import Settings, SettingsError

if TYPE_CHECKING:
    from prometheus_client import Metric

log = logging.getLogger(__name__)

#: Where prometheus_client's multiprocess mode keeps its files (its own variable name).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files of gauges that count only while their process lives (``gauge_livesum_<pid>.db``).
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


@contextmanager
def serve_worker_metrics(settings: Settings) -> Iterator[Path | None]:
    """While inside: pool processes forked from this one share their metrics, served on
    ``worker_metrics_port``; yields the directory (None when the port is 0: nothing served).
    The directory is removed on the way out. A port that cannot be listened on raises
    :class:`SettingsError` naming the variable."""
    if not settings.worker_metrics_port:
        yield None
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before its multiprocess directory was set; "
            "the pool processes' metrics would stay in memory"
        )
    path = Path(tempfile.mkdtemp(prefix="htrq-worker-metrics-"))  # private: mode 0700
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(MergedCollector(path))
        port, addr = settings.worker_metrics_port, settings.worker_metrics_addr
        try:
            server, thread = start_http_server(port, addr, registry)
        except OSError as exc:
            raise SettingsError(
                f"HTRQ_WORKER_METRICS_PORT={port}: cannot listen on {addr}:{port} ({exc})"
            ) from exc
        log.info("worker metrics on http://%s:%d/metrics", addr, port)
        try:
            yield path
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    finally:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


class MergedCollector:
    """prometheus_client's ``MultiProcessCollector`` over ``path``, that first forgets the
    live gauges of processes that are gone: a pool process killed outright (out of memory,
    SIGKILL) runs no exit hook, and its ``htrq_worker_processes`` would count forever."""

    def __init__(self, path: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self.files = MultiProcessCollector(None, path=str(path))

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import mark_process_dead

        for f in self.path.iterdir():
            m = _LIVE_GAUGE_FILE.fullmatch(f.name)
            if m and not _alive(int(m.group(1))):
                mark_process_dead(int(m.group(1)), str(self.path))
        return self.files.collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process under a reused pid: not ours to judge
    return True
