"""A tenant's jobs, newest first, filtered and paged by keyset (``created_at``, ``id``).

A cursor names the last job of a page, so that the next page starts right after it however
many jobs arrive meanwhile, and costs one index range scan however deep the list goes
(``OFFSET`` would read every skipped row).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Row, and_, case, func, or_, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from htrq.errors import PageError
from htrq.models import Job, Page
from htrq.resources import JobList, JobStatus, JobSummary, StatusCounts, job_status

#: Most jobs one page of the list may hold.
MAX_LIMIT = 200
#: A cursor: the last job's creation time in microseconds since 1970, ``-``, and its id in
#: hex. Every text of this shape is a cursor the list can continue from, so that the OpenAPI
#: document can say exactly which cursors the server takes (17 digits reach the year 5138).
CURSOR_PATTERN = r"^[0-9]{1,17}-[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
            # What htrq.jobs.started reads, as aggregates: a page running, the first
            # waiting page's queued_at, the last finish by a worker.
            func.max(case((Page.status == "running", 1), else_=0)).label("any_running"),
            func.min(case((Page.status == "queued", Page.queued_at))).label("first_wait"),
            func.max(
                case((and_(Page.attempts > 0, Page.finished_at.is_not(None)), Page.finished_at))
            ).label("last_finish"),
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
    # htrq.jobs.started: a page running, or a worker's finish since the waiting were queued
    # (a job with unfinished pages has a running page or a waiting one: no NULL here).
    started = or_(
        c.c.any_running == 1,
        and_(c.c.last_finish.is_not(None), c.c.last_finish >= c.c.first_wait),
    )
    return {
        "succeeded": and_(finished, c.c.failed == 0),
        "failed": and_(finished, c.c.succeeded == 0, c.c.failed > 0),
        "partial": and_(finished, c.c.succeeded > 0, c.c.failed > 0),
        "running": and_(~finished, started),
        "queued": and_(~finished, ~started),
    }[status]


def _summary(row: Row[*tuple[Any, ...]]) -> JobSummary:
    job = row[0]
    counts = StatusCounts(
        queued=row.queued, running=row.running, succeeded=row.succeeded, failed=row.failed
    )
    return JobSummary(
        id=job.id,
        status=job_status(
            counts,
            started=bool(row.any_running)
            or (
                row.last_finish is not None
                and (row.first_wait is None or row.last_finish >= row.first_wait)
            ),
        ),
        counts=counts,
        **job_fields(job),
    )


def job_fields(job: Job) -> dict[str, Any]:
    """What a job's summary and its full resource take from the job's row as it is."""
    return {
        "external_id": job.external_id,
        "mode": job.mode,
        "model": job.model,
        "language": job.language,
        "reuse": job.reuse,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def _encode(job: Job) -> str:
    micros = (job.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{job.id.hex}"


def _decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise PageError("invalid_cursor", "cursor is not one this API gave out")
    micros, _, last = cursor.partition("-")
    return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=last)
