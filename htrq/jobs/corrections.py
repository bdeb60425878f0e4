"""People's corrections of lines, stored beside the model's reading and never over it.

``Line.text`` stays what the model read; ``Line.correction`` is what a person says the line
reads, with ``corrected_at``. ``reviewed_at`` is when a person last checked the line, with or
without a change. Both the page resource and every export show the corrected text; the
corrections export (``worker.training.reviewed_lines``) turns the checked lines
(:func:`checked_lines`) into training data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.jobs import NotFound, PageNotSucceeded, check_page_index, line_resource, owned_job
from htrq.models import Job, Line, Page, Tenant, utcnow
from htrq.resources import REVIEW_BELOW, LineResource
from htrq.tenants import UnknownTenant
from htrq.text import clean_correction

#: Line indexes are a 32-bit INTEGER column, as page indexes are.
_MAX_INDEX = 2**31 - 1


class InvalidCorrection(ValueError):
    """A correction that is not one line of text, or a request that asks for nothing."""


def correct_line(
    *,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    page_index: int,
    line_index: int,
    text: str | None = None,
    reviewed: bool | None = None,
    review_below: float = REVIEW_BELOW,
) -> LineResource:
    """Store a person's judgement of one line and return the line as the API shows it.

    ``text``: the line's reading (cleaned by :func:`htrq.text.clean_correction`); it marks
    the line reviewed too. A text
    equal to the model's reading removes an earlier correction: the model was right.
    ``reviewed=True`` alone confirms the line as it reads now (a correction is kept);
    ``reviewed=False`` takes a person's judgement back: no correction, not reviewed.

    Neither ``text`` nor ``reviewed``: nothing changes, and the line is answered as it is
    (an empty PATCH).

    Raises :class:`NotFound` (another tenant's job too), :class:`PageNotSucceeded`, and
    :class:`InvalidCorrection` for a text that is not one line, or a request that
    contradicts itself.
    """
    if text is not None and reviewed is False:
        raise InvalidCorrection("a correction is a review: send text without reviewed=false")
    try:
        cleaned = clean_correction(text) if text is not None else None
    except ValueError as exc:
        raise InvalidCorrection(str(exc)) from None
    check_page_index(job_id, page_index)
    if not 0 <= line_index <= _MAX_INDEX:
        raise NotFound(f"no line {line_index} on page {page_index} of job {job_id}")
    with session_scope(sessions) as s:
        job = owned_job(s, tenant_id, job_id)
        page = s.scalars(
            select(Page).where(Page.job_id == job.id, Page.index == page_index)
        ).first()
        if page is None:
            raise NotFound(f"no page {page_index} in job {job_id}")
        if page.status != "succeeded":
            raise PageNotSucceeded(
                f"page {page_index} is {page.status}; correct its lines once it has succeeded"
            )
        # Locked: two people saving the same line one after the other leave the last word.
        line = s.scalars(
            select(Line).where(Line.page_id == page.id, Line.index == line_index).with_for_update()
        ).first()
        if line is None:
            raise NotFound(f"no line {line_index} on page {page_index} of job {job_id}")
        now = utcnow()
        if cleaned is None and reviewed is None:
            pass  # nothing asked: the line as it is
        elif cleaned is not None:
            if cleaned == line.text:
                line.correction, line.corrected_at = None, None
            elif cleaned != line.correction:
                line.correction, line.corrected_at = cleaned, now
            line.reviewed_at = now
        elif reviewed:
            line.reviewed_at = now
        else:
            line.correction, line.corrected_at, line.reviewed_at = None, None, None
        s.flush()
        return line_resource(line, review_below=review_below)


@dataclass(frozen=True)
class CheckedLine:
    """A line a person corrected or confirmed, with where its page's image is stored."""

    job_id: uuid.UUID
    page: int  #: the page's index in its job
    blob_key: str
    frame: int
    width: int | None
    height: int | None
    mode: str  #: the job's mode: ``page`` or ``line``
    index: int  #: the line's index on its page
    text: str  #: the model's reading
    correction: str | None
    x0: int
    y0: int
    x1: int
    y1: int
    polygon: str | None  #: JSON, as stored
    baseline: str | None  #: JSON, as stored


def checked_lines(
    *,
    sessions: sessionmaker[Session],
    tenant: str | None = None,
    since: datetime | None = None,
) -> list[CheckedLine]:
    """The lines a person corrected or confirmed (as read) on succeeded pages, of ``tenant``'s
    jobs only and checked at or after ``since`` where given, in job, page and line order.

    Raises :class:`UnknownTenant` for a tenant name that does not exist.
    """
    with sessions() as s:
        return [CheckedLine(**row._mapping) for row in s.execute(_checked_query(s, tenant, since))]


def _checked_query(
    session: Session, tenant: str | None, since: datetime | None
) -> Select[*tuple[Any, ...]]:
    q = (
        select(
            Page.job_id,
            Page.index.label("page"),
            Page.blob_key,
            Page.frame,
            Page.width,
            Page.height,
            Job.mode,
            Line.index,
            Line.text,
            Line.correction,
            Line.x0,
            Line.y0,
            Line.x1,
            Line.y1,
            Line.polygon,
            Line.baseline,
        )
        .join(Page, Line.page_id == Page.id)
        .join(Job, Page.job_id == Job.id)
        .where(
            Page.status == "succeeded",
            or_(Line.correction.is_not(None), Line.reviewed_at.is_not(None)),
        )
        .order_by(Job.created_at, Job.id, Page.index, Line.index)
    )
    if tenant is not None:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).first()
        if tenant_id is None:
            raise UnknownTenant(f"no tenant {tenant!r}")
        q = q.where(Job.tenant_id == tenant_id)
    if since is not None:
        q = q.where(or_(Line.reviewed_at >= since, Line.corrected_at >= since))
    return q
