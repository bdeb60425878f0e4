"""A tenant's jobs, newest first, filtered and paged by keyset (``created_at``, ``id``).

A cursor names the last job of a page, so that the next page starts right after it however
many jobs arrive meanwhile, and costs one index range scan however deep the list goes
(``OFFSET`` would read every skipped row).
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Row, and_, case, func, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from htrq.errors import PageError
from htrq.models import Job, Page
from htrq.resources import JobList, JobStatus, JobSummary, StatusCounts, job_status

#: Most jobs one page of the list may hold.
MAX_LIMIT = 200


def list_jobs(
    *,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    status: JobStatus | None = None,
    external_id: str | None = None,
    created_after: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobList:
    """One page of the tenant's jobs; ``next_cursor`` continues it."""
    limit = max(1, min(limit, MAX_LIMIT))
    counts = (
        select(
            Page.job_id,
            func.count().label("total"),
            *(
                func.sum(case((Page.status == state, 1), else_=0)).label(state)
                for state in ("queued", "running", "succeeded", "failed")
            ),
            func.max(Page.attempts).label("max_attempts"),
        )
        .where(Page.job_id == Job.id)
        .group_by(Page.job_id)
        .lateral("counts")
    )
    q = (
        select(Job, counts)
        .join(counts, counts.c.job_id == Job.id)
        .where(Job.tenant_id == tenant_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit + 1)
    )
    if external_id is not None:
        q = q.where(Job.external_id == external_id)
    if created_after is not None:
        q = q.where(Job.created_at > created_after)
    if cursor:
        at, last = _decode(cursor)
        q = q.where(tuple_(Job.created_at, Job.id) < tuple_(at, last))
    if status is not None:
        q = q.where(_status_is(status, counts))
    with sessions() as s:
        rows = s.execute(q).all()
    jobs = [_summary(r) for r in rows[:limit]]
    more = len(rows) > limit
    return JobList(jobs=jobs, next_cursor=_encode(rows[limit - 1][0]) if more else None)


def _status_is(status: JobStatus, c: FromClause) -> ColumnElement[bool]:
    finished = c.c.queued + c.c.running == 0
    return {
        "succeeded": and_(finished, c.c.failed == 0),
        "failed": and_(finished, c.c.succeeded == 0, c.c.failed > 0),
        "partial": and_(finished, c.c.succeeded > 0, c.c.failed > 0),
        "running": and_(~finished, c.c.max_attempts > 0),
        "queued": and_(~finished, c.c.max_attempts == 0),
    }[status]


def _summary(row: Row[*tuple[Any, ...]]) -> JobSummary:
    job = row[0]
    counts = StatusCounts(
        queued=row.queued, running=row.running, succeeded=row.succeeded, failed=row.failed
    )
    return JobSummary(
        id=job.id,
        status=job_status(counts, started=row.max_attempts > 0),
        external_id=job.external_id,
        mode=job.mode,
        model=job.model,
        language=job.language,
        created_at=job.created_at,
        finished_at=job.finished_at,
        counts=counts,
    )


def _encode(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, last = raw.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(last)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PageError("invalid_cursor", "cursor is not one this API gave out") from exc
