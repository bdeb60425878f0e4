"""Page state changes that make at-least-once delivery give exactly-once results.

A claim moves pages ``queued -> running`` and bumps ``attempts``, which becomes the claim's
fencing token; it also takes over a ``running`` page whose lease has expired (its worker died
and Redis redelivered the message), so late acks rescue a page without waiting for a sweeper.
Every later write for the page matches ``status='running' AND attempts=token``, so a worker
whose lease was taken back (or a duplicate message) can no longer change it.

A page being read may have identical pages waiting for its reading (``htrq.jobs.reuse``): the
transaction that stores its result copies the result into them, and one that takes it out of
``running`` without a result sends them back to the queue (``freed``: the caller sends them
after the commit; without it, the sweeper re-sends them as lost messages).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, and_, bindparam, delete, false, insert, or_, select, true, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from htrq.db import rowcount
from htrq.delivery.completion import note_finished
from htrq.jobs.reuse import copy_to_waiters, release_waiters
from htrq.models import Job, Line, Page, utcnow

NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class Claim:
    page_id: uuid.UUID
    token: int  #: ``attempts`` after the claim
    attempt_limit: int
    blob_key: str
    frame: int
    read_alone: bool = False  #: its last group ran out of time: read it in a group of its own
    job_id: uuid.UUID | None = None
    created_at: datetime | None = None  #: when the page was submitted
    #: Its reading key, once the worker has settled it as its key's reader
    #: (``htrq.jobs.reuse.settle``): identical pages may then wait for its result.
    reading_key: str | None = None


Points = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class ReadBy:
    """The provenance a worker stores with each page it reads."""

    model_sha256: str | None
    decoding: dict[str, object]
    htrq_version: str
    #: The tenant model that reads (``tenant_models.id``); None: a deployment's model.
    model_id: uuid.UUID | None = None

    def in_language(self, language: str | None, word_weight: float) -> ReadBy:
        """This provenance for a page read in ``language`` (its lexicon at ``word_weight``);
        a page read without a lexicon says ``none``."""
        spoken = language if language and language != "none" and word_weight else "none"
        words = {"language": spoken, "word_weight": word_weight if spoken != "none" else 0.0}
        return ReadBy(
            self.model_sha256, {**self.decoding, **words}, self.htrq_version, self.model_id
        )


class LineLike(Protocol):
    # Read-only members, so that frozen dataclasses (the pipeline's LineOutput) match.
    @property
    def text(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def bbox(self) -> tuple[int, int, int, int]: ...
    @property
    def polygon(self) -> Points | None: ...
    @property
    def baseline(self) -> Points | None: ...
    @property
    def words(self) -> Sequence[Mapping[str, Any]] | None: ...
    @property
    def box_source(self) -> str | None: ...


def claim_pages(
    session: Session, page_ids: Sequence[uuid.UUID], *, lease_seconds: float
) -> list[Claim]:
    """Claim the claimable pages among ``page_ids`` in one statement; others are skipped.

    Claimable: ``queued``, or ``running`` with an expired lease and attempts left. The second
    is a message redelivered after its worker died (the visibility timeout is at least twice
    the lease, so by then the dead worker's lease has run out): without it, such a message
    would claim nothing and the page would wait for a sweeper. A page whose lease still holds
    is someone's work in progress, and a duplicate for it claims nothing; a page with its
    attempts spent is left to the sweeper, which fails it.
    """
    if not page_ids:
        return []
    now = utcnow()
    claimable = or_(
        Page.status == "queued",
        and_(
            Page.status == "running",
            Page.lease_until < now,
            Page.attempts < Page.attempt_limit,
        ),
    )
    rows = session.execute(
        update(Page)
        .where(Page.id.in_(set(page_ids)), claimable)
        .values(
            status="running",
            attempts=Page.attempts + 1,
            lease_until=now + timedelta(seconds=lease_seconds),
            started_at=now,
            waiting_on=None,  # a waiter taken over waits for nothing until settled again
        )
        .returning(
            Page.id,
            Page.attempts,
            Page.attempt_limit,
            Page.blob_key,
            Page.frame,
            Page.read_alone,
            Page.job_id,
            Page.created_at,
        )
        .execution_options(**NO_SYNC)
    ).all()
    return [
        Claim(
            r.id,
            r.attempts,
            r.attempt_limit,
            r.blob_key,
            r.frame,
            r.read_alone,
            job_id=r.job_id,
            created_at=r.created_at,
        )
        for r in rows
    ]


def _fenced_update(session: Session, claim: Claim, **values: object) -> bool:
    """UPDATE the page only while ``claim`` holds it; True if it did."""
    done = session.execute(
        update(Page)
        .where(Page.id == claim.page_id, Page.status == "running", Page.attempts == claim.token)
        .values(lease_until=None, **values)
        .execution_options(**NO_SYNC)
    )
    return rowcount(done) == 1


# The statements a page's result takes: Core statements on the tables (the ORM's bulk path
# costs more Python time per page than the round trips do), built once with bound parameters.
# (Declarative types ``__table__`` as any FromClause; a mapped class's is its Table.)
_pages, _lines = cast(Table, Page.__table__), cast(Table, Line.__table__)
_STORE_RESULT = (
    update(_pages)
    .where(
        _pages.c.id == bindparam("claimed_id"),
        _pages.c.status == "running",
        _pages.c.attempts == bindparam("token"),
    )
    .values(
        status="succeeded",
        lease_until=None,
        error_code=None,
        error_message=None,
        text=bindparam("new_text"),
        confidence=bindparam("new_confidence"),
        model=bindparam("new_model"),
        model_sha256=bindparam("new_model_sha256"),
        decoding=bindparam("new_decoding"),
        htrq_version=bindparam("new_htrq_version"),
        model_id=bindparam("new_model_id"),
        processing_ms=bindparam("new_processing_ms"),
        finished_at=bindparam("new_finished_at"),
        width=bindparam("new_width"),
        height=bindparam("new_height"),
    )
)
_DROP_LINES = delete(_lines).where(_lines.c.page_id == bindparam("claimed_id"))
_ADD_LINES = insert(_lines)


def write_result(
    session: Session,
    claim: Claim,
    *,
    text: str,
    confidence: float | None,
    lines: Sequence[LineLike],
    model: str,
    processing_ms: int,
    size: tuple[int, int] | None = None,
    provenance: ReadBy | None = None,
    copied_into: list[uuid.UUID] | None = None,
) -> bool:
    """Store a page's result if the claim still holds; False means it was thrown away.

    ``size`` is the width and height of the page image the line coordinates refer to. The
    pages waiting for this reading get a copy of it in the same transaction (their ids are
    appended to ``copied_into``), and their jobs complete with this page's where they finish.

    The fenced UPDATE comes first: it locks the row, so the line replacement below cannot
    interleave with another writer of the same page.
    """
    done = session.execute(
        _STORE_RESULT,
        {
            "claimed_id": claim.page_id,
            "token": claim.token,
            "new_text": text,
            "new_confidence": confidence,
            "new_model": model,
            "new_model_sha256": provenance.model_sha256 if provenance else None,
            "new_decoding": json.dumps(provenance.decoding) if provenance else None,
            "new_htrq_version": provenance.htrq_version if provenance else None,
            "new_model_id": provenance.model_id if provenance else None,
            "new_processing_ms": processing_ms,
            "new_finished_at": utcnow(),
            "new_width": size[0] if size else None,
            "new_height": size[1] if size else None,
        },
    )
    if rowcount(done) != 1:
        return False
    session.execute(_DROP_LINES, {"claimed_id": claim.page_id})
    if lines:
        session.execute(
            _ADD_LINES,
            [
                {
                    "page_id": claim.page_id,
                    "index": i,
                    "text": ln.text,
                    "confidence": ln.confidence,
                    "x0": ln.bbox[0],
                    "y0": ln.bbox[1],
                    "x1": ln.bbox[2],
                    "y1": ln.bbox[3],
                    "polygon": _points_json(ln.polygon),
                    "baseline": _points_json(ln.baseline),
                    "words": list(ln.words) if ln.words is not None else None,
                    "box_source": ln.box_source,
                }
                for i, ln in enumerate(lines)
            ],
        )
    waiters = copy_to_waiters(session, claim.page_id) if claim.reading_key else []
    if copied_into is not None:
        copied_into.extend(page_id for page_id, _ in waiters)
    # One call for all the jobs: note_finished locks them in one order, so that two writers
    # whose originals and copies cross between two jobs never wait on each other.
    note_finished(session, [_job_of(session, claim), *(job_id for _, job_id in waiters)])
    return True


def _points_json(points: Points | None) -> str | None:
    return json.dumps([[int(x), int(y)] for x, y in points]) if points else None


def write_failure(
    session: Session,
    claim: Claim,
    *,
    code: str,
    message: str,
    freed: list[uuid.UUID] | None = None,
) -> bool:
    """Mark the page ``failed`` (no retry) if the claim still holds; the pages waiting for its
    reading go back to the queue (appended to ``freed``), to be read themselves: a copy is
    never failed by its original's failure."""
    kept = _fenced_update(
        session,
        claim,
        status="failed",
        error_code=code,
        error_message=message,
        finished_at=utcnow(),
    )
    if kept:
        _free_waiters(session, claim, freed)
        note_finished(session, [_job_of(session, claim)])
    return kept


def _free_waiters(session: Session, claim: Claim, freed: list[uuid.UUID] | None) -> None:
    """The claim's page left ``running`` without a reading: its waiters go back to the queue."""
    if claim.reading_key is None:
        return  # never settled as a reader: nothing waits for it
    released = release_waiters(session, [claim.page_id])
    if freed is not None:
        freed.extend(released)


def _job_of(session: Session, claim: Claim) -> uuid.UUID:
    if claim.job_id is not None:
        return claim.job_id
    return session.execute(select(Page.job_id).where(Page.id == claim.page_id)).scalar_one()


#: What a transient error's message says of what comes next: another attempt, or none.
WILL_RETRY = "; it will be tried again"
NO_ATTEMPTS_LEFT = (
    "; that was its last attempt (POST /v1/jobs/{id}/retry gives it more once the cause is fixed)"
)


def release_for_retry(
    session: Session,
    claim: Claim,
    *,
    code: str,
    message: str,
    freed: list[uuid.UUID] | None = None,
) -> str | None:
    """After a transient error: back to ``queued``, or ``failed`` once attempts are spent.

    Returns the new status, or None if the claim no longer holds. The error is kept on the
    page either way, so a page that runs out of attempts shows the last one; ``message``
    says what went wrong, and this adds whether it will be tried again, which only this
    knows. Its waiters go back to the queue either way (appended to ``freed``): a copy waits
    only for a reading in progress.
    """
    if claim.token >= claim.attempt_limit:
        final = message + NO_ATTEMPTS_LEFT
        failed = write_failure(session, claim, code=code, message=final, freed=freed)
        return "failed" if failed else None
    kept = _fenced_update(
        session,
        claim,
        status="queued",
        error_code=code,
        error_message=message + WILL_RETRY,
        queued_at=utcnow(),
    )
    if kept:
        _free_waiters(session, claim, freed)
    return "queued" if kept else None


def release_to_read_alone(
    session: Session, claim: Claim, freed: list[uuid.UUID] | None = None
) -> bool:
    """After its group ran out of time: back to ``queued``, to be read in a group of its own.

    The attempt is given back (``attempt_limit`` + 1): the page did nothing wrong yet. It
    can happen once per page, since a page read alone that runs out of time fails instead.
    Its waiters go back to the queue (appended to ``freed``).
    """
    kept = _fenced_update(
        session,
        claim,
        status="queued",
        read_alone=True,
        attempt_limit=Page.attempt_limit + 1,
        queued_at=utcnow(),
    )
    if kept:
        _free_waiters(session, claim, freed)
    return kept


@dataclass(frozen=True)
class Swept:
    requeued: list[uuid.UUID]  #: lease expired, attempts left: send again
    failed: list[uuid.UUID]  #: lease expired, attempts spent
    resend: list[uuid.UUID]  #: queued so long that their message is presumed lost
    #: Waited for the reading of a page taken back here: back to the queue, send again.
    freed: list[uuid.UUID] = field(default_factory=list)


LEASE_EXPIRED = (
    "worker_lost",
    "the worker processing this page stopped before finishing (crash, kill or lease expiry); "
    "retry the job, and raise HTRQ_LEASE_SECONDS if batches take longer than the lease",
)


#: Where a job's pages are queued: its tenant and the model it asked for (None: the default).
Route = tuple[uuid.UUID, str | None]


def stale_routes(session: Session, *, older_than: datetime) -> list[Route]:
    """The routes of the pages ``queued`` since before ``older_than`` (their message may be
    lost), each once."""
    rows = session.execute(
        select(Job.tenant_id, Job.model)
        .join(Page, Page.job_id == Job.id)
        .where(Page.status == "queued", Page.queued_at < older_than)
        .distinct()
    ).all()
    return [(r.tenant_id, r.model) for r in rows]


def routes_of(session: Session, page_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Route]:
    """Each page's route, to send it to its tenant's queue of its job's model."""
    if not page_ids:
        return {}
    rows = session.execute(
        select(Page.id, Job.tenant_id, Job.model)
        .join(Job, Page.job_id == Job.id)
        .where(Page.id.in_(set(page_ids)))
    ).all()
    return {r.id: (r.tenant_id, r.model) for r in rows}


def sweep(
    session: Session,
    *,
    now: datetime | None = None,
    resend_older_than: datetime | None = None,
    resend_routes: Collection[Route] | None = None,
) -> Swept:
    """Take back pages whose lease expired; pick ``queued`` pages older than the given time
    (only those of ``resend_routes``, where given: the routes whose queue is empty).

    Each statement only matches rows still in the state it expects, so several sweepers
    (one per worker) can run at once without doing anything twice.
    """
    now = now or utcnow()
    expired = and_(Page.status == "running", Page.lease_until < now)
    code, message = LEASE_EXPIRED
    failed_rows = session.execute(
        update(Page)
        .where(expired, Page.attempts >= Page.attempt_limit)
        .values(
            status="failed",
            error_code=code,
            error_message=message,
            lease_until=None,
            finished_at=now,
        )
        .returning(Page.id, Page.job_id)
        .execution_options(**NO_SYNC)
    ).all()
    failed = [r.id for r in failed_rows]
    note_finished(session, [r.job_id for r in failed_rows])
    requeued = session.scalars(
        update(Page)
        .where(expired, Page.attempts < Page.attempt_limit)
        .values(
            status="queued", error_code=code, error_message=message, lease_until=None, queued_at=now
        )
        .returning(Page.id)
        .execution_options(**NO_SYNC)
    ).all()
    freed = release_waiters(session, [*failed, *requeued])
    resend: Sequence[uuid.UUID] = []
    if resend_older_than is not None and (resend_routes is None or resend_routes):
        of_routes = (
            Page.job_id.in_(select(Job.id).where(or_(false(), *map(_on_route, resend_routes))))
            if resend_routes is not None
            else true()
        )
        resend = session.scalars(
            update(Page)
            .where(Page.status == "queued", Page.queued_at < resend_older_than, of_routes)
            .values(queued_at=now)
            .returning(Page.id)
            .execution_options(**NO_SYNC)
        ).all()
    return Swept(list(requeued), list(failed), list(resend), freed)


def _on_route(route: Route) -> ColumnElement[bool]:
    tenant_id, model = route
    return and_(
        Job.tenant_id == tenant_id, Job.model.is_(None) if model is None else Job.model == model
    )
