"""``GET /metrics``: Prometheus gauges for operators, read from the database and the broker.

Gauges are computed at scrape time rather than counted in processes, so any number of API
replicas and workers give the same answer and a restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from api.deps import SenderDep, SessionsDep, get_limiter
from htrq.queue import CelerySender
from htrq.stats import queue_stats
from htrq.tenants.limits import TenantLimiter

router = APIRouter(tags=["health"])


class _ServiceCollector(Collector):
    def __init__(
        self, sessions: sessionmaker[Session], sender: CelerySender, limiter: TenantLimiter
    ) -> None:
        self.sessions, self.sender, self.limiter = sessions, sender, limiter

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "htrq_up", "1 when htrq can reach the component", labels=["component"]
        )
        try:
            stats = queue_stats(self.sessions)
            up.add_metric(["database"], 1)
        except Exception:
            stats = None
            up.add_metric(["database"], 0)
        if stats is not None:
            pages = GaugeMetricFamily(
                "htrq_pages", "Pages waiting or being read, by status", labels=["status"]
            )
            pages.add_metric(["queued"], stats.queued)
            pages.add_metric(["running"], stats.running)
            yield pages
            yield GaugeMetricFamily(
                "htrq_oldest_queued_page_seconds",
                "How long the longest-waiting queued page has waited",
                value=stats.oldest_queued_seconds,
            )
            yield GaugeMetricFamily(
                "htrq_expired_leases",
                "Running pages whose lease ran out (a worker died; the sweeper takes them back)",
                value=stats.expired_leases,
            )
        try:
            depth = self.sender.queue_depth()
            up.add_metric(["broker"], 1)
            yield GaugeMetricFamily(
                "htrq_broker_queue_messages",
                "Page messages waiting in Redis, not yet taken by a worker",
                value=depth,
            )
        except Exception:
            up.add_metric(["broker"], 0)
        try:
            refused = self.limiter.refused()
        except Exception:
            refused = None
        if refused is not None:
            limited = CounterMetricFamily(
                "htrq_tenant_refusals",
                "Requests answered 429 over every API process, by code (rate_limited, "
                "too_many_concurrent)",
                labels=["code"],
            )
            for code in ("rate_limited", "too_many_concurrent"):
                limited.add_metric([code], refused.get(code, 0))
            yield limited
        yield up


@router.get("/metrics", response_class=Response)
def metrics(sessions: SessionsDep, sender: SenderDep, request: Request) -> Response:
    """Prometheus text format: queue depth, pages in flight, oldest wait, expired leases,
    requests refused by the tenant limits."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(sessions, sender, get_limiter(request)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
