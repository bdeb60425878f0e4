"""The Grafana dashboard (docker/grafana-dashboard.json) against the metrics the code exports."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.routes.metrics import _ServiceCollector
from htrq.queue import CelerySender, make_celery
from htrq.settings import Settings
from htrq.tenants.limits import LimitSettings, TenantLimiter
from worker.serving import worker_metrics as metrics
from worker.serving.batch import BatchReport, GroupRead

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana-dashboard.json"
METRIC = re.compile(r"\bhtrq_\w+")
#: ``name{label="v", other=~"w"}``: a series selector and its label matchers.
SELECTOR = re.compile(r"\b(htrq_\w+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def _queries(node: Any) -> Iterator[str]:
    """Every PromQL string of the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _queries(value)


@pytest.fixture
def exported(
    sessions: sessionmaker[Session], settings: Settings, broker_url: str
) -> dict[str, dict[str, set[str]]]:
    """Family name -> sample name -> label names, as the code exports them: the worker's
    after one recorded batch, the API's from its collector on a real database and Redis."""
    families: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    model = "dashboard-test"
    report = BatchReport(
        succeeded=1,
        lines=1,
        groups=[GroupRead(pages=1, lines=1, seconds=0.1)],
        errors=Counter({"invalid_image": 1}),
        latencies=[1.0],
    )
    metrics.record_batch(report, model)
    metrics.generate_timer(model)(0.1)
    metrics.process_ready(model)
    assert settings.broker_url
    limits = LimitSettings(rate=1, burst=1, heavy=1, slot_seconds=1)
    limiter = TenantLimiter.from_url(settings.broker_url, limits)
    api = _ServiceCollector(sessions, CelerySender(make_celery(settings)), limiter)
    for family in [f for m in metrics.ALL for f in m.collect()] + list(api.collect()):
        for s in family.samples:
            if not s.name.endswith("_created"):  # multiprocess mode does not serve them
                families[family.name][s.name] |= set(s.labels)
    assert {"htrq_pages", "htrq_broker_queue_messages", "htrq_up"} <= set(families)
    return families


def test_the_dashboard_asks_only_for_series_and_labels_the_code_exports(
    exported: dict[str, dict[str, set[str]]],
) -> None:
    """Each metric name in a query is one the worker or the API exports, with its labels:
    renaming a metric or a label in the code without the dashboard fails here."""
    queries = list(_queries(json.loads(DASHBOARD.read_text())))
    assert queries
    labels = {name: names for samples in exported.values() for name, names in samples.items()}
    for query in queries:
        for name in METRIC.findall(query):
            assert name in labels, f"{name} in {query!r}"
        for name, matchers in SELECTOR.findall(query):
            for label in MATCHER.findall(matchers):
                assert label in labels[name], f"{name}{{{label}}} in {query!r}"


def test_the_dashboard_shows_every_metric_the_code_exports(
    exported: dict[str, dict[str, set[str]]],
) -> None:
    """No worker or API metric is left off the dashboard."""
    used = {n for q in _queries(json.loads(DASHBOARD.read_text())) for n in METRIC.findall(q)}
    missing = [family for family, samples in exported.items() if not used & set(samples)]
    assert missing == []


def test_every_panel_reads_from_the_prometheus_variable() -> None:
    """The datasource is a variable the importer picks, never a uid of one Grafana."""
    dashboard = json.loads(DASHBOARD.read_text())
    (var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (var["name"], var["query"]) == ("datasource", "prometheus")

    def sources(node: Any) -> Iterator[dict[str, str]]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from sources(value)
        elif isinstance(node, list):
            for value in node:
                yield from sources(value)

    found = list(sources(dashboard["panels"]))
    assert found and all(s == {"type": "prometheus", "uid": "${datasource}"} for s in found)
