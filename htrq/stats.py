"""What operators watch: the work waiting and in flight, read from the database at scrape time.

Only the ``queued`` and ``running`` pages are counted (an index covers them), so a scrape
costs the same however many finished pages the table holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from htrq.models import Page, utcnow


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    #: ``running`` pages whose lease has run out: a worker died; the sweeper takes them back.
    expired_leases: int
    #: Seconds the longest-waiting ``queued`` page has waited (0 when none waits).
    oldest_queued_seconds: float


def queue_stats(sessions: sessionmaker[Session], now: datetime | None = None) -> QueueStats:
    """The pages waiting and in flight now, read in one session."""
    with sessions() as session:
        return _queue_stats(session, now or utcnow())


def _queue_stats(session: Session, now: datetime) -> QueueStats:
    counts = dict(
        session.execute(
            select(Page.status, func.count())
            .where(Page.status.in_(("queued", "running")))
            .group_by(Page.status)
        ).all()
    )
    expired = session.scalar(
        select(func.count()).where(Page.status == "running", Page.lease_until < now)
    )
    oldest = session.scalar(select(func.min(Page.queued_at)).where(Page.status == "queued"))
    return QueueStats(
        queued=counts.get("queued", 0),
        running=counts.get("running", 0),
        expired_leases=expired or 0,
        oldest_queued_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
    )
