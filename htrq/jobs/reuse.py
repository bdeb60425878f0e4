"""Reuse: a page whose reading the tenant already has is not read again.

A reading depends on the file's bytes and frame, the job's mode, the model (its name and the
SHA-256 of its weights), the worker's reading settings (beams, CTC weight, stretches, dtype,
device, quantization, token limit, segmenter, line margin, PDF resolution, the job's language
and its word weight: the provenance it stores with each page) and the htrq version.
:func:`reading_key` digests them together with the tenant, so that two tenants never share a
reading, whatever they upload.

The worker decides, when it claims pages (:func:`settle`), not the API at submit: only the
worker knows the weights it loaded and the settings it reads with (two workers of one model
name may hold different weights during an upgrade), and a copy still passes through its
tenant's queue and a claim, so fair share, page states, job completion and webhooks are those
of any page. For each claimed page, under a transaction lock per key:

- a ``succeeded`` page with the same key: its reading (text, confidence, provenance, size and
  lines, not a person's corrections) is copied into the new page's own rows, which is
  ``succeeded`` at once and records ``reused_from``;
- a page with the same key being read (``running`` with a live lease): the new page waits
  for it (``waiting_on``), reading nothing; the transaction that stores the reader's result
  copies it into its waiters (:func:`copy_to_waiters`), and a reader that leaves ``running``
  without a reading (failed, put back) sends its waiters back to the queue, their attempt
  given back, to be read themselves (:func:`release_waiters`);
- otherwise the page is read, and is its key's reader.

Races: two identical pages claimed at once (in one group or by two workers) take the key's
lock in turn, so exactly one of them becomes the reader and the other waits for it. The
settle step locks the readers it waits for (``FOR SHARE``), and every change of a reader's
state updates its row before it looks for waiters, so a waiter is never attached to a
reader that has just finished without it. A waiter keeps a lease like any claim: if all else
failed, the sweeper would take it back and it would be claimed and settled again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, insert, or_, select, text, true, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from htrq.db import rowcount
from htrq.models import Job, Line, Page, utcnow

#: Recorded with the reading but without effect on it: the pages read in one call (each line
#: crop is resized to the model's input on its own, so the batch it is in does not change
#: what the model reads; on CPU the figures are the same to the last bit either way).
NOT_READING = frozenset({"batch_size"})

NO_SYNC = {"synchronize_session": False}

# The tables themselves (``__table__`` is typed as any FromClause): copies are bulk
# statements over columns, not objects.
_pages, _lines = cast(Table, Page.__table__), cast(Table, Line.__table__)
#: What a copy takes of its original's page row: the machine's reading and its provenance.
_READING = (
    "text",
    "confidence",
    "model",
    "model_sha256",
    "decoding",
    "htrq_version",
    "model_id",
)
_SIZE = ("width", "height")
#: Line columns a copy takes: all but the row's own identity and a person's work on it, so
#: that what a worker adds to a line (words, boxes) is copied without a change here.
_PERSON = frozenset({"id", "page_id", "correction", "corrected_at", "reviewed_at"})
_LINE_COLUMNS = [c for c in _lines.c if c.name not in _PERSON]


def reading_key(
    *,
    tenant_id: uuid.UUID,
    blob_key: str,
    frame: int,
    mode: str,
    model: str,
    model_sha256: str | None,
    decoding: Mapping[str, object],
    htrq_version: str,
) -> str | None:
    """The digest of what a page's reading depends on; None where the model's weights have
    no digest (then nothing tells two readings' models apart, and the page is always read).

    ``decoding`` is the worker's recorded provenance (``ReadBy.decoding``): every entry but
    those in :data:`NOT_READING` counts, so that a setting added to the provenance later
    counts too.
    """
    if not model_sha256:
        return None
    material = {
        "tenant": str(tenant_id),
        "blob": blob_key,
        "frame": frame,
        "mode": mode,
        "model": model,
        "model_sha256": model_sha256,
        "htrq_version": htrq_version,
        "reading": {k: v for k, v in decoding.items() if k not in NOT_READING},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Candidate:
    """A page just claimed, as :func:`settle` sees it."""

    page_id: uuid.UUID
    token: int  #: the claim's fencing token
    tenant_id: uuid.UUID
    key: str
    reuse: bool  #: its job takes earlier readings (False: read afresh, and be a source)


@dataclass
class Settled:
    """What :func:`settle` made of each candidate."""

    read: list[uuid.UUID] = field(default_factory=list)  #: read them: each is its key's reader
    copied: list[uuid.UUID] = field(default_factory=list)  #: succeeded with a copied reading
    waiting: list[uuid.UUID] = field(default_factory=list)  #: wait for a reader
    #: Candidates whose claim no longer held (taken back meanwhile): nothing to do.
    lost: list[uuid.UUID] = field(default_factory=list)
    #: Jobs with a page copied into: :func:`settle`'s caller completes them.
    jobs: list[uuid.UUID] = field(default_factory=list)


def lock_keys(session: Session, keys: Iterable[str]) -> None:
    """The transaction-scoped lock of each reading key (sorted: no two waiters deadlock).
    SQLite (``htrq transcribe``) has one writer: no locks."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted(set(keys)):
        # Advisory locks take a bigint. The blob locks use a key's first 15 hex digits;
        # the last 15 here, so that a reading key never shares a blob's lock by design.
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(key[-15:], 16)})


def settle(
    session: Session,
    candidates: Sequence[Candidate],
    *,
    lease_seconds: float,
    now: datetime | None = None,
) -> Settled:
    """Copy, wait or read, for each candidate (see the module's docstring); in the caller's
    transaction, which completes the jobs in ``Settled.jobs`` (``note_finished``) before it
    commits."""
    out = Settled()
    if not candidates:
        return out
    now = now or utcnow()
    lock_keys(session, (c.key for c in candidates))
    sources, readers = _earlier(session, candidates, now)
    marked: list[Candidate] = []
    for c in candidates:
        src = sources.get((c.tenant_id, c.key)) if c.reuse else None
        reader = readers.get((c.tenant_id, c.key)) if c.reuse else None
        if src is not None:
            copied = _copy(session, src, _fenced(c), now, key=c.key)
            (out.copied if copied else out.lost).append(c.page_id)
            out.jobs.extend(job_id for _, job_id in copied)
        elif reader is not None:
            reader_id, reader_lease = reader
            # At least as long as its reader's: a waiter whose lease ran out first would be
            # taken back by the sweeper, an attempt spent on nothing.
            lease = max(now + timedelta(seconds=lease_seconds), reader_lease or now)
            waits = session.execute(
                update(Page)
                .where(_fenced(c))
                .values(reading_key=c.key, waiting_on=reader_id, lease_until=lease)
                .execution_options(**NO_SYNC)
            )
            (out.waiting if rowcount(waits) == 1 else out.lost).append(c.page_id)
        else:
            marked.append(c)
            # The next identical page of this group waits for this one.
            readers.setdefault((c.tenant_id, c.key), (c.page_id, None))
    if marked:
        # A claim taken back since it was made marks nothing here, and its reading is then
        # thrown away when it is written (the write is fenced too).
        session.execute(
            update(_pages)
            .where(
                _pages.c.id == bindparam("pid"),
                _pages.c.status == "running",
                _pages.c.attempts == bindparam("token"),
            )
            .values(reading_key=bindparam("key"), waiting_on=None),
            [{"pid": c.page_id, "token": c.token, "key": c.key} for c in marked],
        )
        out.read.extend(c.page_id for c in marked)
    return out


def _fenced(c: Candidate) -> ColumnElement[bool]:
    return and_(Page.id == c.page_id, Page.status == "running", Page.attempts == c.token)


Source = Any  #: a row of :func:`_earlier`'s query (the original's reading and identity)
Reader = tuple[uuid.UUID, datetime | None]  #: a reader's page id and lease


def _earlier(
    session: Session, candidates: Sequence[Candidate], now: datetime
) -> tuple[dict[tuple[uuid.UUID, str], Source], dict[tuple[uuid.UUID, str], Reader]]:
    """Each candidate key's best earlier reading (an original before a copy, then the
    latest) and its reader, the tenant checked again beside the key; the rows locked
    ``FOR SHARE``, so that a reader cannot finish, nor an original be deleted, before this
    transaction has attached to it or copied it."""
    ids = [c.page_id for c in candidates]
    rows = session.execute(
        select(
            Page.id,
            Page.job_id,
            Page.index,
            Page.status,
            Page.reading_key,
            Page.lease_until,
            Page.reused_from_job,
            Page.finished_at,
            Job.tenant_id,
            *(getattr(Page, c) for c in _READING + _SIZE),
        )
        .join(Job, Job.id == Page.job_id)
        .where(
            Page.reading_key.in_({c.key for c in candidates}),
            Page.id.not_in(ids),
            or_(
                Page.status == "succeeded",
                and_(Page.status == "running", Page.waiting_on.is_(None), Page.lease_until > now),
            ),
        )
        .with_for_update(read=True, of=Page)
    ).all()
    sources: dict[tuple[uuid.UUID, str], Source] = {}
    readers: dict[tuple[uuid.UUID, str], Reader] = {}
    for r in sorted(rows, key=_preference):
        at = (r.tenant_id, r.reading_key)
        if r.status == "succeeded":
            sources.setdefault(at, r)
        else:
            readers.setdefault(at, (r.id, r.lease_until))
    return sources, readers


def _preference(r: Any) -> tuple[bool, float]:
    # Originals first (a copy's reused_from would otherwise point at a copy), latest first.
    return (r.reused_from_job is not None, -(r.finished_at.timestamp() if r.finished_at else 0))


def _copy(
    session: Session,
    src: Source,
    where: ColumnElement[bool],
    now: datetime,
    *,
    key: str | None = None,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Copy ``src``'s reading into the ``running`` pages ``where`` selects: its page fields
    (with ``reused_from``), then its lines, into the copies' own rows. Returns each copy's
    id and job."""
    values: dict[str, object] = {c: getattr(src, c) for c in _READING + _SIZE}
    if key is not None:
        values["reading_key"] = key
    copies = session.execute(
        update(Page)
        .where(where, Page.status == "running")
        .values(
            status="succeeded",
            lease_until=None,
            waiting_on=None,
            error_code=None,
            error_message=None,
            finished_at=now,
            processing_ms=0,  # no pipeline ran for it
            reused_from_job=src.job_id,
            reused_from_page=src.index,
            **values,
        )
        .returning(Page.id, Page.job_id)
        .execution_options(**NO_SYNC)
    ).all()
    if not copies:
        return []
    ids = [r.id for r in copies]
    session.execute(delete(_lines).where(_lines.c.page_id.in_(ids)))
    dst = _pages.alias("dst")
    session.execute(
        insert(_lines).from_select(
            ["page_id", *(c.name for c in _LINE_COLUMNS)],
            select(dst.c.id, *_LINE_COLUMNS)
            .select_from(_lines.join(dst, true()))
            .where(_lines.c.page_id == src.id, dst.c.id.in_(ids)),
        )
    )
    return [(r.id, r.job_id) for r in copies]


def copy_to_waiters(session: Session, page_id: uuid.UUID) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """After ``page_id``'s reading was stored, in the same transaction: copy it into the pages
    that wait for it; returns each one's id and job, for the caller to complete the jobs."""
    waiting = session.scalars(
        select(Page.id).where(Page.waiting_on == page_id, Page.status == "running")
    ).first()
    if waiting is None:  # nearly always: one indexed look on a partial index
        return []
    src = session.execute(
        select(
            Page.id, Page.job_id, Page.index, *(getattr(Page, c) for c in _READING + _SIZE)
        ).where(Page.id == page_id)
    ).one()
    return _copy(session, src, Page.waiting_on == page_id, utcnow())


def release_waiters(session: Session, page_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
    """The pages waiting for any of ``page_ids``, which left ``running`` without a reading
    (or were deleted), back to ``queued`` with their attempt given back: each will be read
    itself, or wait again for whichever identical page is being read then. Returns their ids,
    for the caller to send after the commit."""
    if not page_ids:
        return []
    return list(
        session.scalars(
            update(Page)
            .where(Page.waiting_on.in_(set(page_ids)), Page.status == "running")
            .values(
                status="queued",
                waiting_on=None,
                lease_until=None,
                queued_at=utcnow(),
                attempt_limit=Page.attempt_limit + 1,
            )
            .returning(Page.id)
            .execution_options(**NO_SYNC)
        ).all()
    )
