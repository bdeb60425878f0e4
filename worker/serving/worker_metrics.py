"""The worker's Prometheus metrics (``htrq_worker_*``), recorded in each pool process.

They are recorded from the batch task's report (``worker.serving.tasks``) and from the recognizer's
``on_generate`` hook, so that the pipeline and the recognizer know nothing of Prometheus.
Under ``htrq worker`` with ``HTRQ_WORKER_METRICS_PORT`` set, prometheus_client runs in
multiprocess mode (``worker.serving.metrics_server``): each process writes its values to files in a
private directory, and the main process merges them when scraped. Otherwise (``htrq
transcribe``, metrics off) they are in-process values that nobody reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.multiprocess import mark_process_dead

from worker.serving.metrics_server import MULTIPROC_DIR_ENV

if TYPE_CHECKING:
    from worker.serving.batch import BatchReport

#: What can become of a page in a batch, as the worker's log line counts them.
OUTCOMES = ("succeeded", "failed", "requeued", "discarded")

PAGES = Counter(
    "htrq_worker_pages",
    "Pages handled by outcome: succeeded, failed, requeued (put back to be read again), "
    "discarded (the claim was lost before the result was stored)",
    ["model", "outcome"],
)
LINES = Counter("htrq_worker_lines", "Lines of the pages stored as succeeded", ["model"])
#: How a claimed page was handled besides its outcome: ``read`` by the pipeline, or not
#: read because its tenant already had its reading (``htrq.jobs.reuse``): ``reused`` (stored
#: as a copy, counted in succeeded too) or ``waiting`` (for an identical page being read).
READINGS = Counter(
    "htrq_worker_readings",
    "Pages by how they were handled: read (by the pipeline), reused (stored with a copy of an "
    "identical page's reading), waiting (for an identical page being read)",
    ["model", "how"],
)
HOW = ("read", "reused", "waiting")
ERRORS = Counter(
    "htrq_worker_errors",
    "Error codes given to pages, whether they failed or were put back to be tried again",
    ["model", "code"],
)
GROUP_PAGES = Histogram(
    "htrq_worker_group_pages",
    "Pages per pipeline run (a group of pages, or a page read alone)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
GROUP_LINES = Histogram(
    "htrq_worker_group_lines",
    "Lines read per pipeline run",
    ["model"],
    buckets=(1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
)
GROUP_SECONDS = Histogram(
    "htrq_worker_group_seconds",
    "Seconds per pipeline run: decoding, segmentation and recognition of its pages",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
GENERATE_SECONDS = Histogram(
    "htrq_worker_generate_seconds",
    "Seconds per batched recognizer call (encoder and generate())",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PAGE_LATENCY = Histogram(
    "htrq_worker_page_latency_seconds",
    "Seconds from a page's submission to its result (succeeded or failed)",
    ["model"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
PROCESSES = Gauge(
    "htrq_worker_processes",
    "Worker processes with a loaded model that reads",
    ["model"],
    # Summed over the processes alive: a process that exits takes its 1 with it.
    multiprocess_mode="livesum",
)

#: Every metric above (the dashboard test checks its queries against these).
ALL = (
    PAGES,
    LINES,
    READINGS,
    ERRORS,
    GROUP_PAGES,
    GROUP_LINES,
    GROUP_SECONDS,
    GENERATE_SECONDS,
    PAGE_LATENCY,
    PROCESSES,
)


def record_batch(report: BatchReport, model: str) -> None:
    """Count what one batch did."""
    for outcome in OUTCOMES:
        # Every outcome is exported from the first batch on, at 0 where nothing happened, so
        # that rates over it are 0 rather than missing.
        PAGES.labels(model, outcome).inc(getattr(report, outcome))
    LINES.labels(model).inc(report.lines)
    for how in HOW:
        READINGS.labels(model, how).inc(getattr(report, how))
    for code, n in report.errors.items():
        ERRORS.labels(model, code).inc(n)
    for group in report.groups:
        GROUP_PAGES.labels(model).observe(group.pages)
        GROUP_LINES.labels(model).observe(group.lines)
        GROUP_SECONDS.labels(model).observe(group.seconds)
    latency = PAGE_LATENCY.labels(model)
    for seconds in report.latencies:
        latency.observe(seconds)


def generate_timer(model: str) -> Callable[[float], None]:
    """A recognizer ``on_generate`` hook that observes each call's seconds."""
    return GENERATE_SECONDS.labels(model).observe


def process_ready(model: str) -> None:
    """Count this process among those that read, once its model has loaded and read."""
    PROCESSES.labels(model).set(1)


def process_exiting() -> None:
    """Forget this process's live gauges (its counters stay counted), as it exits."""
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if path:
        mark_process_dead(os.getpid(), path)
