"""Worker metrics from a real ``htrq worker``: its pool processes' counts, merged, over HTTP."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import Engine, func, select

from htrq.models import Line, Page
from htrq.settings import Settings
from tests.images import corrupt_png, page_png
from tests.services import HTRQ, Processes, free_port, poll_job, service_env, wait_for
from worker.recognition.pipeline import PageInput, PageOutput


def scrape(url: str) -> list[Sample]:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return [s for f in text_string_to_metric_families(r.text) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.slow
def test_a_job_is_counted_once_across_both_pool_processes(
    processes: Processes, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Two pool processes read a job with a corrupt page; one scrape of the main process
    counts every page by outcome, the error by code, each page's latency, the lines stored,
    the groups and the recognizer's calls; the private directory is gone after shutdown."""
    port = free_port()
    settings = settings.model_copy(
        update={
            "worker_concurrency": 2,
            "worker_metrics_port": port,
            "worker_metrics_addr": "127.0.0.1",
            # Groups of 2 out of 13 pages: the next group is ready while one process still
            # reads the last, so both processes read some.
            "flush_every": 2,
        }
    )
    env = service_env(settings)
    temp = tmp_path / "worker-tmp"  # where the worker makes its metrics directory
    temp.mkdir()
    worker, worker_log = processes.worker("metrics", {**env, "TMPDIR": str(temp)})
    url = processes.api(env)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    (metrics_dir,) = temp.glob("htrq-worker-metrics-*")
    model = str(settings.model)
    # " ready." comes before the pool processes have loaded the model; wait for both.
    wait_for(
        lambda: value(scrape(metrics_url), "htrq_worker_processes", model=model) == 2,
        "both pool processes to report a loaded model",
        worker,
        worker_log,
    )

    files = [("files", (f"p{i}.png", page_png(f"page {i}"), "image/png")) for i in range(12)]
    files.insert(5, ("files", ("broken.png", corrupt_png(), "image/png")))
    r = httpx.post(f"{url}/v1/jobs", files=files, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = poll_job(url, job_id)
    assert job["counts"] == {"queued": 0, "running": 0, "succeeded": 12, "failed": 1}

    m = scrape(metrics_url)
    assert value(m, "htrq_worker_processes", model=model) == 2

    pages = {
        o: value(m, "htrq_worker_pages_total", model=model, outcome=o)
        for o in ("succeeded", "failed", "requeued", "discarded")
    }
    assert pages == {"succeeded": 12, "failed": 1, "requeued": 0, "discarded": 0}
    errors = {s.labels["code"]: s.value for s in m if s.name == "htrq_worker_errors_total"}
    assert errors == {"invalid_image": 1}
    readings = {
        how: value(m, "htrq_worker_readings_total", model=model, how=how)
        for how in ("read", "reused", "waiting")
    }
    assert readings == {"read": 13, "reused": 0, "waiting": 0}  # distinct pages: all read

    with engine.connect() as conn:
        rows = conn.execute(select(Page).where(Page.job_id == job_id)).all()
        lines = conn.execute(
            select(func.count())
            .select_from(Line)
            .join(Page, Line.page_id == Page.id)
            .where(Page.job_id == job_id)
        ).scalar_one()
    assert value(m, "htrq_worker_lines_total", model=model) == lines == 12

    # One latency per finished page, from its submission: what the database says, plus the
    # moments between the worker's write and its clock reading (under a second each).
    latency = "htrq_worker_page_latency_seconds"
    assert value(m, f"{latency}_count", model=model) == len(rows) == 13
    assert value(m, f"{latency}_bucket", model=model, le="3600.0") == 13
    stored = sum((p.finished_at - p.created_at).total_seconds() for p in rows)
    assert stored <= value(m, f"{latency}_sum", model=model) < stored + 13

    # Every page went through a pipeline run; the corrupt one has no lines to read.
    groups = value(m, "htrq_worker_group_pages_count", model=model)
    assert value(m, "htrq_worker_group_pages_sum", model=model) == 13
    assert value(m, "htrq_worker_group_lines_sum", model=model) == 12
    assert value(m, "htrq_worker_group_seconds_count", model=model) == groups >= 7
    assert value(m, "htrq_worker_generate_seconds_count", model=model) >= 1
    assert value(m, "htrq_worker_generate_seconds_sum", model=model) > 0

    # Both pool processes read groups, so the figures above are the merge of the two.
    readers = set(re.findall(rb"/(ForkPoolWorker-\d+)\] batch of", worker_log.read_bytes()))
    assert len(readers) == 2, worker_log.read_text()[-3000:]

    processes.kill(worker, signal.SIGTERM)  # a warm shutdown
    assert worker.returncode == 0
    assert not metrics_dir.exists()


def test_recognizer_calls_are_timed_after_the_start_check_only_with_metrics(
    settings: Settings,
) -> None:
    """A worker context times each batched recognizer call, not the line read at start;
    the context of ``htrq transcribe`` times none."""
    from worker.serving.app import load_context
    from worker.serving.embedded import LocalQueue

    assert settings.database_url and settings.batch_size == 8
    series = ("htrq_worker_generate_seconds_count", {"model": str(settings.model)})
    pages = [PageInput(key=i, data=page_png(f"line {i}")) for i in range(10)]  # 10 lines
    for record, calls in ((True, 2), (False, 0)):  # 10 lines at batch size 8: 5 and 5
        before = REGISTRY.get_sample_value(*series) or 0
        ctx = load_context(
            settings, database_url=settings.database_url, send=LocalQueue(), record_metrics=record
        )
        try:
            assert (REGISTRY.get_sample_value(*series) or 0) == before
            assert all(isinstance(o, PageOutput) for o in ctx.pipeline(pages).values())
            assert (REGISTRY.get_sample_value(*series) or 0) == before + calls
        finally:
            ctx.sessions.kw["bind"].dispose()


@pytest.mark.slow
def test_a_port_in_use_stops_the_worker_naming_the_variable(
    settings: Settings, tmp_path: Path
) -> None:
    """A metrics port that cannot be listened on stops ``htrq worker`` at once with status 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings.model_copy(
            update={"worker_metrics_port": port, "worker_metrics_addr": "127.0.0.1"}
        )
        temp = tmp_path / "worker-tmp"
        temp.mkdir()
        done = subprocess.run(
            [HTRQ, "worker"],
            env={**service_env(settings), "TMPDIR": str(temp)},
            capture_output=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert f"HTRQ_WORKER_METRICS_PORT={port}" in done.stderr.decode()
    assert list(temp.iterdir()) == []  # the directory made for the run is removed
