"""A job's completion, noticed exactly once, in the transaction that finishes it.

Each time a page reaches ``succeeded`` or ``failed``, the writer calls :func:`note_finished`
in the same transaction. It locks the job row first, so that two workers finishing a job's
last two pages at the same moment take turns: the second sees the first's page finished and
is the one that completes the job. Completing stamps ``finished_at``, counts the completion
and, if the job has a callback URL, writes its webhook event to the outbox
(``webhook_events``), from which the workers' dispatcher sends it after the commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from htrq.models import Job, Page, WebhookEvent, utcnow
from htrq.resources import StatusCounts, job_status

EVENT_TYPE = "job.finished"


def note_finished(session: Session, job_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Complete every job among ``job_ids`` whose pages have all finished; return those."""
    done = []
    # One lock order for every writer (by id), so that two of them never wait on each other.
    for job_id in sorted(set(job_ids)):
        if _complete(session, job_id):
            done.append(job_id)
    return done


def _complete(session: Session, job_id: uuid.UUID) -> bool:
    job = session.execute(
        select(Job.id, Job.external_id, Job.callback_url, Job.completions, Job.finished_at)
        .where(Job.id == job_id)
        .with_for_update()
    ).first()
    if job is None:  # deleted meanwhile: the page finished into nothing
        return False
    rows = session.execute(
        select(Page.status, func.count()).where(Page.job_id == job_id).group_by(Page.status)
    ).all()
    counts = StatusCounts(**{status: n for status, n in rows})
    if counts.queued or counts.running or job.finished_at is not None:
        return False
    now = utcnow()
    seq = job.completions + 1
    session.execute(update(Job).where(Job.id == job_id).values(finished_at=now, completions=seq))
    if job.callback_url:
        event_id = uuid.uuid4()
        payload = {
            "id": str(event_id),
            "type": EVENT_TYPE,
            "job_id": str(job_id),
            "external_id": job.external_id,
            "status": job_status(counts, started=True),
            "counts": counts.model_dump(),
            "finished_at": now.isoformat(),
            "completion": seq,
        }
        session.add(
            WebhookEvent(
                id=event_id,
                job_id=job_id,
                seq=seq,
                url=job.callback_url,
                payload=json.dumps(payload, separators=(",", ":")),
                status="pending",
                attempts=0,
                next_attempt_at=now,
            )
        )
    return True


def reopen(session: Session, job_id: uuid.UUID) -> None:
    """A retry put pages back: the job is unfinished until they finish again."""
    session.execute(update(Job).where(Job.id == job_id).values(finished_at=None))
