"""The worker's metrics: what a batch report counts, and the merge over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from htrq.settings import Settings
from tests.services import free_port
from worker.serving import worker_metrics as metrics
from worker.serving.batch import BatchReport, GroupRead
from worker.serving.metrics_server import MULTIPROC_DIR_ENV, serve_worker_metrics

ROOT = Path(__file__).resolve().parents[2]


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_report_is_counted_by_outcome_code_and_size() -> None:
    """Pages by outcome (0 where none), lines, codes, runs and latencies land in their series."""
    model = f"m-{uuid.uuid4().hex[:8]}"  # series of this test's own
    report = BatchReport(
        received=5,
        claimed=5,
        succeeded=3,
        failed=1,
        requeued=1,
        lines=7,
        groups=[GroupRead(pages=4, lines=7, seconds=1.5), GroupRead(pages=1, lines=0, seconds=0.2)],
        errors=Counter({"invalid_image": 1, "model_error": 1}),
        latencies=[3.0, 4.0, 90.0, 4000.0],
    )
    metrics.record_batch(report, model)

    pages = {o: _value("htrq_worker_pages_total", model=model, outcome=o) for o in metrics.OUTCOMES}
    assert pages == {"succeeded": 3, "failed": 1, "requeued": 1, "discarded": 0}
    assert _value("htrq_worker_lines_total", model=model) == 7
    assert _value("htrq_worker_errors_total", model=model, code="invalid_image") == 1
    assert _value("htrq_worker_errors_total", model=model, code="model_error") == 1
    assert _value("htrq_worker_group_pages_count", model=model) == 2
    assert _value("htrq_worker_group_pages_sum", model=model) == 5
    assert _value("htrq_worker_group_lines_sum", model=model) == 7
    assert _value("htrq_worker_group_seconds_sum", model=model) == pytest.approx(1.7)
    latency = "htrq_worker_page_latency_seconds_bucket"
    assert _value(latency, model=model, le="2.0") == 0
    assert _value(latency, model=model, le="5.0") == 2
    assert _value(latency, model=model, le="120.0") == 3
    assert _value(latency, model=model, le="3600.0") == 3  # an hour is the last bucket
    assert _value(latency, model=model, le="+Inf") == 4


def test_metrics_refuse_to_start_once_prometheus_client_is_imported() -> None:
    """Values made before the directory is set stay in memory: refuse instead of serving 0s."""
    assert "prometheus_client" in sys.modules  # this test module imported it
    with (
        pytest.raises(RuntimeError, match="imported before"),
        serve_worker_metrics(Settings(worker_metrics_port=free_port())),
    ):
        pass
    assert MULTIPROC_DIR_ENV not in os.environ


def test_port_zero_serves_nothing() -> None:
    """With HTRQ_WORKER_METRICS_PORT unset there is no directory and no server."""
    with serve_worker_metrics(Settings()) as path:
        assert path is None and MULTIPROC_DIR_ENV not in os.environ


#: Run in a fresh interpreter, as ``htrq worker`` is: the directory is set before
#: prometheus_client is first imported; two forked processes record, one exits through its
#: exit hook, the other is killed outright.
MERGE = """
import json, os, signal, sys, urllib.request
from htrq.settings import Settings
from worker.serving.metrics_server import serve_worker_metrics

def scrape(port):
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}

port = int(sys.argv[1])
out = {}
settings = Settings(worker_metrics_port=port, worker_metrics_addr="127.0.0.1")
with serve_worker_metrics(settings) as path:
    from worker.serving import worker_metrics as metrics
    from worker.serving.batch import BatchReport
    children = []
    for n in (2, 3):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            metrics.process_ready("m")
            metrics.record_batch(BatchReport(succeeded=n, lines=n, latencies=[1.5] * n), "m")
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            metrics.process_exiting()
            os._exit(0)
        os.read(ready_r, 1)
        children.append((pid, go_w))
    out["both"] = scrape(port)
    (hooked, go), (killed, _) = children
    os.write(go, b"x")
    os.waitpid(hooked, 0)
    os.kill(killed, signal.SIGKILL)
    os.waitpid(killed, 0)
    out["gone"] = scrape(port)
    out["path"] = str(path)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_pool_processes_are_merged_and_the_gone_stop_counting_as_ready() -> None:
    """Counts of two forked processes add up in one scrape and outlive them; the ready gauge
    drops for a process that ran its exit hook and for one killed outright; the private
    directory is removed at the end."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(MULTIPROC_DIR_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", MERGE, str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    pages = 'htrq_worker_pages_total{"model": "m", "outcome": "succeeded"}'
    ready = 'htrq_worker_processes{"model": "m"}'
    latencies = 'htrq_worker_page_latency_seconds_count{"model": "m"}'
    assert (out["both"][pages], out["both"][ready], out["both"][latencies]) == (5, 2, 5)
    assert (out["gone"][pages], out["gone"].get(ready, 0), out["gone"][latencies]) == (5, 0, 5)
    assert not Path(out["path"]).exists()
