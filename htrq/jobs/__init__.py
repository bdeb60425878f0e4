"""Job service functions shared by the API and the CLI: submit, read, retry.

Beside them in this package: what workers do to pages (``claims.py``), a tenant's job list
(``listing.py``), deleting jobs (``deletion.py``), uploads on their way to storage
(``uploads.py``) and people's corrections of lines (``corrections.py``).

Every function takes the tenant whose jobs it may touch (``tenant_id``), so that no query
can forget it; another tenant's job is :class:`NotFound`, exactly like a job that does not
exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from urllib.parse import urlsplit

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import read_scope, session_scope
from htrq.delivery.addresses import CallbackPolicy, check_callback_url
from htrq.delivery.completion import reopen
from htrq.delivery.webhooks import latest_event_id, webhook_state
from htrq.errors import PERMANENT_CODES, PageError
from htrq.inputs import UploadInfo
from htrq.jobs.listing import job_fields
from htrq.jobs.uploads import Upload as Upload  # callers build uploads as jobs.Upload
from htrq.models import JOB_MODES, Job, Line, Page, TenantModel, WebhookEvent, utcnow
from htrq.queue import Send, page_queue
from htrq.rendering import RenderBusy, RenderUnavailable, pdf_renderer
from htrq.resources import (
    REVIEW_BELOW,
    ErrorInfo,
    JobResource,
    LineResource,
    PageResource,
    PageStatus,
    PageSummary,
    Provenance,
    ReusedFrom,
    StatusCounts,
    WordResource,
    job_status,
)
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.storage.blobs import lock_blobs, remove_unused
from htrq.text import MODEL_NAME, clean_filename
from htrq.words import served_words

log = logging.getLogger(__name__)

#: Page indexes are a 32-bit INTEGER column.
_MAX_INDEX = 2**31 - 1


class NotFound(LookupError):
    """No job (or page) with that id."""


class PageNotSucceeded(Exception):
    """The page has no reading (yet) to correct or export: it is queued, running or failed."""


class JobNotFinished(Exception):
    """Some of the job's pages are still queued or running."""


class NoPageSucceeded(Exception):
    """The job has finished, but none of its pages succeeded: a format made of succeeded pages
    only (PDF, ALTO, PAGE) would be an empty file."""


class IdempotencyConflict(Exception):
    """The idempotency key belongs to a job with different content."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(
            f"the idempotency key (or external_id) is already used by job {job_id}, submitted "
            "with other content (files, mode or callback URL); use a new key for a new job"
        )
        self.job_id = job_id


def submit(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    send: Send,
    settings: Settings,
    tenant_id: uuid.UUID,
    uploads: Sequence[Upload],
    idempotency_key: str | None = None,
    external_id: str | None = None,
    mode: str = "page",
    callback_url: str | None = None,
    model: str | None = None,
    language: str | None = None,
    reuse: bool = True,
) -> tuple[JobResource, bool]:
    """Store the files, create the job and its pages, then enqueue the pages.

    Returns the job and whether it was created (False: a repeat under the same key, which
    is the tenant's own: two tenants using one key get two jobs).

    ``model`` is one of ``settings.allowed_models`` (None: ``settings.model``); the job keeps
    it, and its pages go to that model's queue, where only its workers take them.
    ``language`` is one of ``settings.allowed_languages`` or ``none`` (None:
    ``settings.language``): its lexicon steers the reading of every page of the job.

    ``reuse``: a page the tenant already had read (same file and frame, model and reading
    settings) takes that reading instead of being read again (``htrq.jobs.reuse``); False
    reads every page afresh.

    A file that cannot be read (broken or encrypted PDF, unknown format, empty, too many
    pixels) does not sink the others: it becomes one page that is ``failed`` at once with
    its code and is never queued. Raises :class:`PageError` (and stores nothing) only for what
    concerns the whole request: no files, a file over the byte limit, too many pages in all,
    a callback URL that is refused, or no readable file at all. Raises
    :class:`IdempotencyConflict` when the key was used for other content, and
    :class:`htrq.rendering.RenderBusy` (storing nothing) when no PDF renderer was free.
    """
    # A model the deployment does not serve may be one of the tenant's own: the deployment
    # model's workers read it (job.model), loading the tenant's from storage.
    tenant_model = _tenant_model(sessions, settings, tenant_id, model)
    if tenant_model is not None:
        model = settings.model
    _check_request(
        settings, uploads, mode=mode, callback_url=callback_url, model=model, language=language
    )
    # Names are stored and written into exports: no control characters, no path, bounded.
    uploads = [
        Upload(clean_filename(up.filename or "upload"), up.data, up.path, up.sha256)
        for up in uploads
    ]
    inspected = _inspect_all(uploads, settings)

    key = idempotency_key or (_external_id_key(external_id) if external_id else None)
    # A repeat that names the default model is the same job as one that names none.
    asked = None if model in (None, settings.model) else model
    if tenant_model is not None:
        asked = f"tenant-model:{tenant_model}"
    # Likewise a repeat that names the default language.
    spoken = None if language in (None, settings.language) else language
    fingerprint = _fingerprint(mode, callback_url, uploads, asked, spoken, reuse)
    if key and (existing := _find_repeat(sessions, tenant_id, key, fingerprint)):
        return existing, False

    job = Job(
        tenant_id=tenant_id,
        idempotency_key=key,
        fingerprint=fingerprint,
        external_id=external_id,
        mode=mode,
        callback_url=callback_url,
        model=model or settings.model,
        language=language or settings.language,
        reuse=reuse,
        tenant_model_id=tenant_model,
    )
    try:
        job_id, page_ids = _store_and_insert(sessions, storage, settings, job, uploads, inspected)
    except Exception as exc:
        # Nothing was committed: files this request stored that no page uses would stay in
        # the store for good (neither DELETE nor retention ever sees them).
        _remove_stored(sessions, storage, [up.digest for up in uploads])
        # Another request with the same key committed first.
        if (
            isinstance(exc, IntegrityError)
            and key
            and (existing := _find_repeat(sessions, tenant_id, key, fingerprint))
        ):
            return existing, False
        raise
    # After the commit: a worker must never receive an id whose row it cannot see.
    queue = page_queue(settings, model=model or settings.model, tenant_id=tenant_id)
    _send_or_leave_to_sweeper(send, page_ids, queue)
    return get_job(sessions=sessions, tenant_id=tenant_id, job_id=job_id), True


_MODEL_NAME = re.compile(MODEL_NAME)


def _tenant_model(
    sessions: sessionmaker[Session], settings: Settings, tenant_id: uuid.UUID, model: str | None
) -> uuid.UUID | None:
    """The id of the tenant's ready model named ``model`` (None for a deployment's model, or
    a name that is neither: ``_check_request`` answers that ``unknown_model``)."""
    if model is None or model in settings.allowed_models or not _MODEL_NAME.fullmatch(model):
        return None  # (a name no model of a tenant can have is never looked up)
    with sessions() as s:
        return s.scalar(
            select(TenantModel.id).where(
                TenantModel.tenant_id == tenant_id,
                TenantModel.name == model,
                TenantModel.status == "ready",
            )
        )


#: Longest ``idempotency_key`` column value.
_KEY_CHARS = 255
_EXTERNAL_ID_PREFIX = "external_id:"


def _external_id_key(external_id: str) -> str:
    """The idempotency key a submit without an ``Idempotency-Key`` header gets from its
    ``external_id``: the id itself where it fits the column (as every earlier version
    stored it, so their jobs are still found), else its SHA-256."""
    key = _EXTERNAL_ID_PREFIX + external_id
    if len(key) <= _KEY_CHARS:
        return key
    return "external_id-sha256:" + hashlib.sha256(external_id.encode()).hexdigest()


def _remove_stored(sessions: sessionmaker[Session], storage: BlobStore, keys: list[str]) -> None:
    """Delete the files among ``keys`` that no page uses, after a submit that failed."""
    try:
        with session_scope(sessions) as s:
            lock_blobs(s, keys)
            remove_unused(s, storage, keys)
    except Exception:
        # The submit's own error is the one to answer; a file left here is only disk.
        log.warning("could not remove the files of a failed submit", exc_info=True)


def _check_request(
    settings: Settings,
    uploads: Sequence[Upload],
    *,
    mode: str,
    callback_url: str | None,
    model: str | None,
    language: str | None = None,
) -> None:
    """Raise :class:`PageError` for a request that cannot be a job whatever its files hold."""
    if mode not in JOB_MODES:
        raise PageError("invalid_mode", f"mode must be one of {', '.join(JOB_MODES)}")
    if model is not None and model not in settings.allowed_models:
        raise PageError(
            "unknown_model",
            f"model {model!r} is not served here; choose one of "
            f"{', '.join(settings.allowed_models)} (HTRQ_MODELS), or leave `model` out for "
            f"the default, {settings.model}",
        )
    if language is not None and language != "none" and language not in settings.allowed_languages:
        raise PageError(
            "unknown_language",
            f"language {language!r} has no lexicon here; choose one of "
            f"{', '.join(settings.allowed_languages)} (HTRQ_LANGUAGES) or `none`, or leave "
            f"`language` out for the default, {settings.language}",
        )
    if not uploads:
        raise PageError("no_files", "send at least one file in the `files` field")
    if callback_url is not None:
        try:
            urlsplit(callback_url).port  # noqa: B018 (raises for a port or host it cannot read)
        except ValueError:
            raise PageError(
                "invalid_callback_url",
                "callback_url is not a URL that can be called: its host or port cannot be "
                "read (a port is 1 to 65535; an IPv6 host is in brackets)",
            ) from None
        check_callback_url(callback_url, CallbackPolicy.from_settings(settings))


def _inspect_all(uploads: Sequence[Upload], settings: Settings) -> list[UploadInfo | PageError]:
    """Each file's page count, or why it cannot be read; raises :class:`PageError` when no
    file is readable or the pages are too many for one job."""
    inspected = [_inspect(up, settings) for up in uploads]
    refused = [
        (up, i) for up, i in zip(uploads, inspected, strict=True) if isinstance(i, PageError)
    ]
    if len(refused) == len(uploads):
        # Nothing readable: a job of failed pages only would tell the client less than a 4xx.
        up, exc = refused[0]
        raise PageError(exc.code, f"{up.filename or 'upload'}: {exc.message}")
    total = sum(1 if isinstance(i, PageError) else i.pages for i in inspected)
    if total > settings.max_pages_per_job:
        raise PageError(
            "too_many_pages",
            f"{total} pages, over the limit of {settings.max_pages_per_job} per job",
        )
    return inspected


def _store_and_insert(
    sessions: sessionmaker[Session],
    storage: BlobStore,
    settings: Settings,
    job: Job,
    uploads: Sequence[Upload],
    inspected: Sequence[UploadInfo | PageError],
) -> tuple[uuid.UUID, list[str]]:
    """Store the files and insert ``job`` with a page per frame, in one transaction; return
    its id and those of the pages to enqueue (a refused file's page is ``failed`` at once)."""
    with session_scope(sessions) as s:
        # Stored under the same locks that deleting a job takes, so that a job deleted at
        # this moment cannot remove a file this one is about to use (files are stored once
        # per content). Refused files are stored too: their page rows need a blob.
        lock_blobs(s, [up.digest for up in uploads])
        for up in uploads:
            with up.open() as fh:
                storage.put_from(up.digest, fh)
        for up, info in zip(uploads, inspected, strict=True):
            frames = 1 if isinstance(info, PageError) else info.pages
            refused = {0: info} if isinstance(info, PageError) else dict(info.refused)
            for frame in range(frames):
                page = Page(
                    index=len(job.pages),
                    blob_key=up.digest,
                    frame=frame,
                    filename=up.filename,
                    status="queued",
                    attempts=0,
                    attempt_limit=settings.max_attempts,
                )
                if (error := refused.get(frame)) is not None:
                    page.status, page.finished_at = "failed", utcnow()
                    page.error_code, page.error_message = error.code, error.message
                job.pages.append(page)
        s.add(job)
        s.flush()
        return job.id, [str(p.id) for p in job.pages if p.status == "queued"]


def _inspect(up: Upload, settings: Settings) -> UploadInfo | PageError:
    """How many pages ``up`` holds (and which fail from their size alone), or why it cannot
    be read.

    Raises :class:`PageError` for what refuses the whole request (over the byte or page limit).
    """
    name = up.filename or "upload"
    if up.size > settings.max_upload_bytes:
        raise PageError(
            "too_large",
            f"{name}: {up.size} bytes, over the limit of {settings.max_upload_bytes}",
        )
    try:
        # PDFs are opened in a render process (PDFium is not thread-safe).
        info = pdf_renderer(settings).inspect(
            up.source,
            max_pages=settings.max_pages_per_job,
            max_pixels=settings.max_pixels,
            max_aspect=settings.max_aspect,
            dpi=settings.pdf_dpi,
        )
    except RenderBusy:
        raise  # no renderer free: the whole request is answered 503, nothing stored
    except RenderUnavailable as exc:
        # Opening a PDF takes milliseconds: one that outlasts HTRQ_PDF_RENDER_SECONDS or
        # crashes the renderer is this file's fault, and would do the same in the worker.
        return PageError("invalid_pdf", f"the PDF could not be read ({exc.code})")
    except PageError as exc:
        if exc.code == "too_many_pages":  # the job would be over the limit too
            raise PageError(exc.code, f"{name}: {exc.message}") from exc
        return exc
    return info


@dataclass(frozen=True)
class Retried:
    """What a retry did: pages put back in the queue, and, when none, why."""

    requeued: int
    reason: str | None = None


def retry(
    *,
    sessions: sessionmaker[Session],
    send: Send,
    settings: Settings,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
) -> int:
    """Re-queue the job's failed pages and return how many (:func:`retry_job`)."""
    return retry_job(
        sessions=sessions, send=send, settings=settings, tenant_id=tenant_id, job_id=job_id
    ).requeued


def retry_job(
    *,
    sessions: sessionmaker[Session],
    send: Send,
    settings: Settings,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
) -> Retried:
    """Re-queue the job's failed pages; how many, and why none when none.

    Pages that failed for their input (``PERMANENT_CODES``: a broken file, a format refused,
    too large...) stay failed: reading them again can only fail again. ``attempts`` is the
    fencing token, so it is never reset: each page gets ``settings.max_attempts`` more
    attempts instead.
    """
    jid = parse_job_id(job_id)
    with session_scope(sessions) as s:
        job = _owned(s, tenant_id, jid, job_id, lock=True)
        queue = page_queue(settings, model=job.model, tenant_id=tenant_id)
        ids = s.scalars(
            update(Page)
            .where(
                Page.job_id == jid,
                Page.status == "failed",
                Page.error_code.is_(None) | Page.error_code.not_in(PERMANENT_CODES),
            )
            .values(
                status="queued",
                attempt_limit=Page.attempts + settings.max_attempts,
                queued_at=utcnow(),
                lease_until=None,
                error_code=None,
                error_message=None,
                finished_at=None,
            )
            .returning(Page.id)
        ).all()
        if ids:
            reopen(s, jid)  # it completes again, with a new event, when they finish
            reason = None
        else:
            reason = _nothing_to_retry(s, jid)
    _send_or_leave_to_sweeper(send, [str(i) for i in ids], queue)
    return Retried(len(ids), reason)


def _nothing_to_retry(s: Session, jid: uuid.UUID) -> str:
    """Why a retry of job ``jid`` put no page back."""
    failed = s.execute(
        select(Page.error_code, func.count())
        .where(Page.job_id == jid, Page.status == "failed")
        .group_by(Page.error_code)
        .order_by(Page.error_code)
    ).all()
    if not failed:
        return "no page of the job has failed: there is nothing to retry"
    n = sum(count for _, count in failed)
    codes = ", ".join(f"{code} ({count})" for code, count in failed)
    return (
        f"the job's {n} failed pages failed for their input ({codes}): reading the same file "
        "again would fail again; send a corrected file as a new job"
    )


#: The status poll's one statement, built once: constructing it (and its correlated
#: subquery's alias) for every poll cost a fifth of the API's CPU per poll under load (py-spy).
_JOB_WITH_PAGES = (
    select(
        Job,
        WebhookEvent,
        Page.id.label("page_id"),
        Page.index.label("page_index"),
        Page.status.label("page_status"),
        Page.attempts.label("page_attempts"),
        Page.queued_at.label("page_queued_at"),
        Page.finished_at.label("page_finished_at"),
        TenantModel.name.label("tenant_model_name"),
    )
    .outerjoin(Page, Page.job_id == Job.id)
    .outerjoin(TenantModel, TenantModel.id == Job.tenant_model_id)
    .outerjoin(WebhookEvent, WebhookEvent.id == latest_event_id(Job.id))
    .where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))
    .order_by(Page.index)
)


def get_job(
    *, sessions: sessionmaker[Session], tenant_id: uuid.UUID, job_id: uuid.UUID | str
) -> JobResource:
    """The job with its pages' states and its latest webhook, read in one statement (one
    round trip, one snapshot: what a client polls for, so it is kept cheap)."""
    jid = parse_job_id(job_id)
    with read_scope(sessions) as s:
        rows = s.execute(_JOB_WITH_PAGES, {"job_id": jid, "tenant_id": tenant_id}).all()
    if not rows:
        raise NotFound(f"no job {job_id}")
    job, event, tenant_model = rows[0][0], rows[0][1], rows[0].tenant_model_name
    rows = [r for r in rows if r.page_id is not None]  # a job without pages: NULLs
    pages = [PageSummary(id=r.page_id, index=r.page_index, status=r.page_status) for r in rows]
    counts = StatusCounts()
    for p in pages:
        setattr(counts, p.status, getattr(counts, p.status) + 1)
    return JobResource(
        id=job.id,
        status=job_status(
            counts,
            started=started(
                (r.page_status, r.page_attempts, r.page_queued_at, r.page_finished_at) for r in rows
            ),
        ),
        callback_url=job.callback_url,
        webhook=webhook_state(event),
        counts=counts,
        pages=pages,
        # A tenant model's name, as the job named it (its deployment model while it exists
        # no more).
        **(job_fields(job) | {"model": tenant_model or job.model}),
    )


def started(pages: Iterable[tuple[str, int, datetime, datetime | None]]) -> bool:
    """Whether a worker is at work on the job's current round, from each page's status,
    attempts, ``queued_at`` and ``finished_at``: a page is running, or a worker finished one
    since the pages still waiting were queued. So a job is ``queued`` until a worker claims
    one of its pages, and again right after a retry put its failed pages back (the earlier
    rounds' pages finished before that), not ``running`` with no page being read."""
    pages = list(pages)
    if any(status == "running" for status, _, _, _ in pages):
        return True
    waiting = [queued_at for status, _, queued_at, _ in pages if status == "queued"]
    if not waiting:
        return any(attempts > 0 for _, attempts, _, _ in pages)
    first = min(waiting)
    return any(
        attempts > 0 and finished is not None and finished >= first
        for _, attempts, _, finished in pages
    )


def get_page(
    *,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    index: int,
    review_below: float = REVIEW_BELOW,
) -> PageResource:
    """The page at ``index``; lines under ``review_below`` confidence say ``needs_review``."""
    jid = parse_job_id(job_id)
    check_page_index(job_id, index)
    with sessions() as s:
        _owned(s, tenant_id, jid, job_id)
        page = s.scalars(select(Page).where(Page.job_id == jid, Page.index == index)).first()
        if page is None:
            raise NotFound(f"no page {index} in job {job_id}")
        lines = s.scalars(select(Line).where(Line.page_id == page.id).order_by(Line.index)).all()
        return page_resource(page, lines, review_below=review_below)


def page_resource(
    page: Page, lines: Sequence[Line], *, review_below: float = REVIEW_BELOW
) -> PageResource:
    """The page as the API shows it: its text and lines as corrected where a person did."""
    shown = [line_resource(ln, review_below=review_below) for ln in lines]
    return PageResource(
        id=page.id,
        job_id=page.job_id,
        index=page.index,
        # The column is a str; its CHECK constraint holds it to PageStatus's values.
        status=cast(PageStatus, page.status),
        filename=page.filename,
        frame=page.frame,
        width=page.width,
        height=page.height,
        # The stored text is the model's; with a correction, the page reads as its lines do.
        text="\n".join(ln.text for ln in shown) if any(ln.corrected for ln in shown) else page.text,
        confidence=page.confidence,
        lines=shown,
        error=ErrorInfo(code=page.error_code, message=page.error_message or "")
        if page.error_code
        else None,
        attempts=page.attempts,
        model=page.model,
        provenance=Provenance(
            model=page.model,
            model_sha256=page.model_sha256,
            model_id=page.model_id,
            decoding=json.loads(page.decoding) if page.decoding else None,
            htrq_version=page.htrq_version,
        )
        if page.model
        else None,
        reused_from=ReusedFrom(job_id=page.reused_from_job, page=page.reused_from_page)
        if page.reused_from_job is not None and page.reused_from_page is not None
        else None,
        started_at=page.started_at,
        finished_at=page.finished_at,
    )


def line_resource(ln: Line, *, review_below: float = REVIEW_BELOW) -> LineResource:
    """A stored line: its corrected text where a person corrected it, the model's beside it.

    A line a person corrected or reviewed no longer ``needs_review``, whatever the model's
    confidence was.
    """
    corrected, reviewed = ln.correction is not None, ln.reviewed_at is not None
    bbox = [ln.x0, ln.y0, ln.x1, ln.y1]
    words, box_source = served_words(
        model_text=ln.text,
        correction=ln.correction,
        words=ln.words,
        box_source=ln.box_source,
        bbox=bbox,
        confidence=ln.confidence,
    )
    needs_review = ln.confidence < review_below and not (corrected or reviewed)
    return LineResource(
        index=ln.index,
        text=ln.correction if ln.correction is not None else ln.text,
        model_text=ln.text,
        confidence=ln.confidence,
        bbox=bbox,
        polygon=json.loads(ln.polygon) if ln.polygon else None,
        baseline=json.loads(ln.baseline) if ln.baseline else None,
        needs_review=needs_review,
        words=[
            WordResource(**w, needs_review=needs_review and w["confidence"] < review_below)
            for w in words
        ],
        box_source=box_source,
        corrected=corrected,
        reviewed=reviewed,
        corrected_at=ln.corrected_at,
        reviewed_at=ln.reviewed_at,
    )


def check_page_index(job_id: uuid.UUID | str, index: int) -> None:
    """Raise :class:`NotFound` for an index no page can have (negative, or beyond the 32-bit
    column, which the database would refuse with an error rather than find nothing)."""
    if not 0 <= index <= _MAX_INDEX:
        raise NotFound(f"no page {index} in job {job_id}")


def parse_job_id(job_id: uuid.UUID | str) -> uuid.UUID:
    """``job_id`` as a UUID, or :class:`NotFound` for text that cannot be one."""
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id}") from None


def check_job(
    *, sessions: sessionmaker[Session], tenant_id: uuid.UUID, job_id: uuid.UUID | str
) -> None:
    """Raise :class:`NotFound` unless the tenant has the job (see :func:`owned_job`)."""
    with sessions() as s:
        owned_job(s, tenant_id, job_id)


def owned_job(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID | str, *, lock: bool = False
) -> Job:
    """The tenant's job, or :class:`NotFound`, the same for another tenant's job as for
    none at all: a tenant never learns that someone else's job exists."""
    return _owned(session, tenant_id, parse_job_id(job_id), job_id, lock=lock)


def _owned(
    session: Session,
    tenant_id: uuid.UUID,
    jid: uuid.UUID,
    shown: uuid.UUID | str,
    *,
    lock: bool = False,
) -> Job:
    q = select(Job).where(Job.id == jid, Job.tenant_id == tenant_id)
    job = session.scalars(q.with_for_update() if lock else q).first()
    if job is None:
        raise NotFound(f"no job {shown}")
    return job


def _fingerprint(
    mode: str,
    callback_url: str | None,
    uploads: Sequence[Upload],
    model: str | None = None,
    language: str | None = None,
    reuse: bool = True,
) -> str:
    h = hashlib.sha256(mode.encode())
    h.update(b"\0" + (callback_url or "").encode() + b"\0")
    # Only what differs from the defaults: earlier jobs keep their fingerprint.
    if model is not None:
        h.update(b"model:" + model.encode() + b"\0")
    if language is not None:  # likewise
        h.update(b"language:" + language.encode() + b"\0")
    if not reuse:
        h.update(b"reuse:false\0")
    for up in uploads:
        h.update(bytes.fromhex(up.digest))
    return h.hexdigest()


def _find_repeat(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, key: str, fingerprint: str
) -> JobResource | None:
    with sessions() as s:
        job = s.scalars(
            select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
        ).first()
    if job is None:
        return None
    if job.fingerprint != fingerprint:
        raise IdempotencyConflict(job.id)
    return get_job(sessions=sessions, tenant_id=tenant_id, job_id=job.id)


def _send_or_leave_to_sweeper(send: Send, page_ids: list[str], queue: str) -> None:
    if not page_ids:
        return
    try:
        send(page_ids, 0, queue=queue)
    except Exception:
        # The rows are committed and stay `queued`; the sweeper re-sends them once the broker
        # is back, so the request still succeeds.
        log.warning("could not enqueue %d pages; the sweeper will re-send them", len(page_ids))
