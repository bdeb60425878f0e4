"""Process one group of page ids: claim, settle reuse, load, run the pipeline, write each page.

Shared by the Celery batch task and the in-process queue of ``htrq transcribe``, so both run
the same code between the broker and the database.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.delivery.completion import note_finished
from htrq.errors import PageError, public_message
from htrq.jobs.claims import (
    Claim,
    ReadBy,
    claim_pages,
    release_for_retry,
    release_to_read_alone,
    routes_of,
    write_failure,
    write_result,
)
from htrq.jobs.reuse import Candidate, reading_key, settle
from htrq.models import Job, Page, utcnow
from htrq.queue import Send, page_queue
from htrq.settings import Settings
from htrq.storage import BlobMissing, BlobStore, StorageUnavailable
from worker.recognition.pipeline import PageInput, PageOutput, Pipeline
from worker.serving.tenant_models import TenantModels
from worker.serving.timelimit import TimeLimitExceeded, time_limit

log = logging.getLogger(__name__)

#: A page read alone that runs past the time limit fails with ``too_slow`` only if its reading
#: cost at least this share of the limit in CPU seconds (the worker process's own, and its
#: render helpers'): it would have run out of time on an idle host too. Below it, the host was
#: busy (other processes had the CPU), the page did little wrong, and it is tried again,
#: counting an attempt, so that a host busy for good still ends it.
CPU_SHARE = 0.5


@dataclass
class BatchContext:
    """What a worker process holds for its lifetime (built once, after the fork)."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: BlobStore
    pipeline: Pipeline
    model_name: str  #: stored on each page it reads
    send: Send  #: re-sends a page (with a countdown) after a transient error
    #: Weights digest, decoding settings and htrq version, stored with each page read.
    read_by: ReadBy | None = None
    #: Claims that failed in a row (the database is down): each re-send of a group that could
    #: not be claimed waits twice as long as the last, up to ``retry_backoff_max``.
    claim_failures: int = 0
    #: Tenants' own models, loaded on demand (None: pages that name one fail ``model_error``
    #: and are tried again, by a worker that has them).
    models: TenantModels | None = None


@dataclass(frozen=True)
class GroupRead:
    """One run of the pipeline: a group of pages, or a page read alone."""

    pages: int
    lines: int  #: lines read on the run's pages (0 when the run failed as a whole)
    seconds: float
    #: CPU seconds the run cost the worker process (all its threads) and its render helpers.
    cpu_seconds: float = 0.0


@dataclass
class BatchReport:
    """What happened to a batch: what the worker logs and its metrics count."""

    received: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    requeued: int = 0
    discarded: int = 0  #: results thrown away because the claim was lost
    read: int = 0  #: pages handed to the pipeline (a reading of their own)
    #: Pages stored with a copy of an identical page's reading (``htrq.jobs.reuse``): at their
    #: claim, or when the reading they waited for was stored here. Counted in ``succeeded``.
    reused: int = 0
    #: Pages left waiting for an identical page being read (they finish with its result).
    waiting: int = 0
    pipeline_ms: int = 0  #: decoding, segmentation and recognition of the whole group
    write_ms: int = 0  #: storing the results, one transaction per page
    requeued_ids: list[str] = field(default_factory=list)
    lines: int = 0  #: lines of the pages stored as succeeded
    groups: list[GroupRead] = field(default_factory=list)
    #: Error codes given to pages, whether they failed or were put back to be tried again.
    errors: Counter[str] = field(default_factory=Counter)
    #: Seconds from submission to result of each page that finished (succeeded or failed).
    latencies: list[float] = field(default_factory=list)


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from ``retry_backoff``, capped."""
    return min(settings.retry_backoff_max, settings.retry_backoff * 2 ** max(0, attempt - 1))


def process_batch(page_ids: Sequence[str], ctx: BatchContext) -> BatchReport:
    """Claim the pages, read them (the group together, a page to be read alone after it) and
    store each page's outcome; the report says what became of each."""
    report = BatchReport(received=len(page_ids))
    ids = _parse_ids(page_ids)
    claimed = _claim(ctx, ids, report)
    if claimed is None:
        return report  # the database is down: the ids were sent again for later
    claims, jobs = claimed
    # In the order their messages came (of two identical pages, the first one sent reads).
    order = {page_id: i for i, page_id in reversed(list(enumerate(ids)))}
    claims.sort(key=lambda c: order[c.page_id])
    report.claimed = len(claims)
    # Each model's pages together: the deployment's, then each tenant model's with its reader.
    by_model: dict[uuid.UUID | None, list[Claim]] = defaultdict(list)
    for c in claims:
        by_model[jobs[c.page_id].tenant_model_id].append(c)
    for model_id, part in by_model.items():
        model_ctx = ctx if model_id is None else _tenant_context(ctx, model_id, part, report)
        if model_ctx is not None:
            _read_claims(model_ctx, part, jobs, report)
    return report


def _tenant_context(
    ctx: BatchContext, model_id: uuid.UUID, claims: list[Claim], report: BatchReport
) -> BatchContext | None:
    """``ctx`` reading with the tenant model ``model_id``; None when it cannot be had: the
    pages then fail (a model deleted) or go back to be tried again (it did not load)."""
    try:
        if ctx.models is None:
            raise RuntimeError("this worker loads no tenant models")
        reader = ctx.models.reader(model_id)
    except PageError as exc:
        _finish(ctx, claims, {c.page_id: exc for c in claims}, report, 0)
        return None
    except Exception as exc:
        log.exception("could not load tenant model %s", model_id)
        for c in claims:
            _release(
                ctx, c, "model_error", f"the model did not load: {public_message(exc)}", report
            )
        return None
    return dataclasses.replace(
        ctx, pipeline=reader.pipeline, model_name=reader.model_name, read_by=reader.read_by
    )


def _read_claims(
    ctx: BatchContext, claims: list[Claim], jobs: dict[uuid.UUID, JobOf], report: BatchReport
) -> None:
    """Settle reuse, read what is left (the group together, a page to be read alone after
    it) and store each page's outcome, all with ``ctx``'s model."""
    claims = _settle(ctx, claims, jobs, report)
    if not claims:
        return
    claims = _one_alone(ctx, claims, report)
    outcomes: dict[object, PageOutput | PageError] = {}
    inputs = _load_inputs(ctx, claims, jobs, outcomes, report)
    together = [c for c in claims if c.page_id in inputs and not c.read_alone]
    alone = [c for c in claims if c.page_id in inputs and c.read_alone]
    report.read += len(together) + len(alone)
    started = time.perf_counter()
    for group in [g for g in (together, alone) if g]:
        _read_group(ctx, group, [inputs[c.page_id] for c in group], outcomes, report)
    elapsed = round((time.perf_counter() - started) * 1000)
    report.pipeline_ms += elapsed
    languages = {key: page.language for key, page in inputs.items()}
    _finish(ctx, claims, outcomes, report, elapsed, languages)


def _parse_ids(page_ids: Sequence[str]) -> list[uuid.UUID]:
    ids = []
    for raw in page_ids:
        try:
            ids.append(uuid.UUID(str(raw)))
        except ValueError:
            log.warning("dropping a message with a malformed page id %r", raw)
    return ids


@dataclass(frozen=True)
class JobOf:
    """What a claimed page's job says about reading it."""

    mode: str
    language: str | None
    tenant_id: uuid.UUID
    reuse: bool
    tenant_model_id: uuid.UUID | None = None


def _claim(
    ctx: BatchContext, ids: list[uuid.UUID], report: BatchReport
) -> tuple[list[Claim], dict[uuid.UUID, JobOf]] | None:
    """The pages this batch may read and what each one's job says; None when the database
    could not be reached (the ids are then sent again, later each time it stays down)."""
    try:
        with session_scope(ctx.sessions) as s:
            claims = claim_pages(s, ids, lease_seconds=ctx.settings.lease_seconds)
            jobs = _jobs_of(s, [c.page_id for c in claims])
    except SQLAlchemyError:
        # Nothing was claimed: send the ids again later, later each time while the database
        # stays down (no attempt was counted, so the page's own attempts cannot say how
        # long). If the send fails too, the sweeper finds the pages `queued` and re-sends them.
        ctx.claim_failures += 1
        delay = backoff(ctx.settings, ctx.claim_failures)
        log.error(
            "claim failed (%d in a row); re-sending %d pages in %g s",
            ctx.claim_failures,
            len(ids),
            delay,
            exc_info=ctx.claim_failures == 1,  # one traceback per outage
        )
        ctx.send([str(i) for i in ids], delay)
        report.requeued = len(ids)
        return None
    ctx.claim_failures = 0
    return claims, jobs


def _settle(
    ctx: BatchContext, claims: list[Claim], jobs: dict[uuid.UUID, JobOf], report: BatchReport
) -> list[Claim]:
    """Reuse (``htrq.jobs.reuse``): the claimed pages whose reading the tenant already has
    are stored as copies, those whose twin is being read wait for it; returns the claims to
    read, each marked as its key's reader. Without a weights digest, or with the database
    failing here, every page is read (a reading is never lost for want of a copy)."""
    by = ctx.read_by
    if by is None or not by.model_sha256:
        return claims
    keys = {
        c.page_id: reading_key(
            tenant_id=jobs[c.page_id].tenant_id,
            blob_key=c.blob_key,
            frame=c.frame,
            mode=jobs[c.page_id].mode,
            model=ctx.model_name,
            model_sha256=by.model_sha256,
            # The provenance this page's reading would record: with its job's language.
            decoding=by.in_language(jobs[c.page_id].language, ctx.settings.word_weight).decoding,
            htrq_version=by.htrq_version,
        )
        for c in claims
    }
    candidates = [
        Candidate(c.page_id, c.token, jobs[c.page_id].tenant_id, key, jobs[c.page_id].reuse)
        for c in claims
        if (key := keys[c.page_id]) is not None
    ]
    try:
        with session_scope(ctx.sessions) as s:
            settled = settle(s, candidates, lease_seconds=ctx.settings.lease_seconds)
            note_finished(s, settled.jobs)
    except SQLAlchemyError:
        log.warning("could not look for earlier readings; reading the %d pages", len(claims))
        return claims
    report.reused += len(settled.copied)
    report.succeeded += len(settled.copied)
    report.waiting += len(settled.waiting)
    for c in claims:
        if c.page_id in settled.copied:
            _finished(report, c)
    readers = set(settled.read)
    skip = set(settled.copied) | set(settled.waiting) | set(settled.lost)
    return [
        dataclasses.replace(c, reading_key=keys[c.page_id]) if c.page_id in readers else c
        for c in claims
        if c.page_id not in skip
    ]


def _send_freed(ctx: BatchContext, freed: list[uuid.UUID]) -> None:
    """Send the pages that waited for a reading that did not come back to their queues
    (each to its tenant's queue of its job's model); the sweeper re-sends them if this fails."""
    if not freed:
        return
    try:
        with ctx.sessions() as s:
            routes = routes_of(s, freed)
        by_queue: dict[str, list[str]] = defaultdict(list)
        for page_id in freed:
            tenant_id, model = routes[page_id]
            queue = page_queue(ctx.settings, model=model, tenant_id=tenant_id)
            by_queue[queue].append(str(page_id))
        for queue, ids in by_queue.items():
            ctx.send(ids, 0, queue=queue)
    except Exception:
        log.exception("could not re-send %d waiting pages; the sweeper will", len(freed))


def _load_inputs(
    ctx: BatchContext,
    claims: list[Claim],
    jobs: dict[uuid.UUID, JobOf],
    outcomes: dict[object, PageOutput | PageError],
    report: BatchReport,
) -> dict[uuid.UUID, PageInput]:
    """The pipeline's input for each claimed page whose file could be read; a file gone for
    good fails its pages (``outcomes``), one out of reach for now puts them back."""
    # Each stored file is read once per group, however many of its pages (PDF pages, TIFF
    # frames) the group holds; so is a file that could not be read.
    blobs: dict[str, bytes | PageError | StorageUnavailable] = {}
    inputs: dict[uuid.UUID, PageInput] = {}
    for c in claims:
        if c.blob_key not in blobs:
            blobs[c.blob_key] = _load(ctx, c.blob_key)
        data = blobs[c.blob_key]
        if isinstance(data, PageError):
            outcomes[c.page_id] = data
        elif isinstance(data, StorageUnavailable):
            # Not the page's fault: it goes back to the queue like a model error.
            _release(ctx, c, "storage_unavailable", str(data), report)
        else:
            job = jobs[c.page_id]
            inputs[c.page_id] = PageInput(
                key=c.page_id, data=data, frame=c.frame, mode=job.mode, language=job.language
            )
    return inputs


def _load(ctx: BatchContext, key: str) -> bytes | PageError | StorageUnavailable:
    """The stored file, or why it cannot be read: gone for good, or for now."""
    try:
        return ctx.storage.get(key)
    except BlobMissing:
        return PageError("blob_missing", "the uploaded file is no longer stored; upload it again")
    except StorageUnavailable as exc:
        log.warning("blob %s could not be read", key, exc_info=True)
        return exc


def _read_group(
    ctx: BatchContext,
    group: list[Claim],
    inputs: list[PageInput],
    outcomes: dict[object, PageOutput | PageError],
    report: BatchReport,
) -> None:
    """Run the pipeline on one group under the time limit; record or release each page."""
    limit = ctx.settings.group_seconds
    try:
        _run_pipeline(ctx, inputs, outcomes, report)
    except TimeLimitExceeded:
        if len(group) == 1:
            # The limit is wall-clock (it protects the lease); the verdict is on what the
            # page itself cost, so that a busy host does not condemn a good page.
            cpu = report.groups[-1].cpu_seconds
            if cpu >= CPU_SHARE * limit:
                outcomes[group[0].page_id] = PageError(
                    "too_slow",
                    f"reading this page alone took more than {limit:g} s "
                    f"(HTRQ_GROUP_TIME_LIMIT) and {cpu:.1f} s of CPU; split it into smaller "
                    "pages",
                )
            else:
                log.warning(
                    "page %s ran past %g s with %.2f s of CPU: the host is busy; tried again",
                    group[0].page_id,
                    limit,
                    cpu,
                )
                _release(
                    ctx,
                    group[0],
                    "too_slow",
                    f"reading this page alone ran past {limit:g} s (HTRQ_GROUP_TIME_LIMIT) "
                    f"while the worker was busy with other work (the page had {cpu:.1f} s of "
                    "CPU)",
                    report,
                )
            return
        log.warning(
            "group of %d pages ran past %g s; each is put back to be read alone", len(group), limit
        )
        for c in group:
            _release_alone(ctx, c, report)
    except Exception as exc:
        # Not the pages' fault (model error, CUDA out of memory after halving, ...): try again.
        log.exception("pipeline failed for %d pages", len(inputs))
        for c in group:
            if c.page_id not in outcomes:
                _release(
                    ctx, c, "model_error", f"recognition failed: {public_message(exc)}", report
                )


def _run_pipeline(
    ctx: BatchContext,
    inputs: list[PageInput],
    outcomes: dict[object, PageOutput | PageError],
    report: BatchReport,
) -> None:
    """The pipeline over ``inputs`` under the group time limit, timed whatever the result."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    try:
        with time_limit(ctx.settings.group_seconds):
            outcomes.update(ctx.pipeline(inputs))
    finally:
        read = [outcomes.get(i.key) for i in inputs]
        report.groups.append(
            GroupRead(
                pages=len(inputs),
                lines=sum(len(o.lines) for o in read if isinstance(o, PageOutput)),
                seconds=time.perf_counter() - started,
                cpu_seconds=_cpu_seconds() - cpu,
            )
        )


def _cpu_seconds() -> float:
    """CPU seconds of this process (every thread: torch reads on several) and of its children
    that ended (a render helper killed for its time)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _one_alone(ctx: BatchContext, claims: list[Claim], report: BatchReport) -> list[Claim]:
    """At most one page to be read alone per batch, so that the batch stays within two
    time limits (the group's and its own) and so within the lease; the others go back."""
    alone = [c for c in claims if c.read_alone]
    for c in alone[1:]:
        _release_alone(ctx, c, report)
    return [c for c in claims if not c.read_alone or c is alone[0]]


def _release_alone(ctx: BatchContext, c: Claim, report: BatchReport) -> None:
    freed: list[uuid.UUID] = []
    try:
        with session_scope(ctx.sessions) as s:
            kept = release_to_read_alone(s, c, freed)
    except SQLAlchemyError:
        log.exception("could not release page %s; its lease will expire", c.page_id)
        return
    _send_freed(ctx, freed)
    if kept:
        report.requeued += 1
        report.requeued_ids.append(str(c.page_id))
        try:
            ctx.send([str(c.page_id)], ctx.settings.retry_backoff)
        except Exception:
            log.exception("could not re-send page %s; the sweeper will", c.page_id)


def _finish(
    ctx: BatchContext,
    claims: list[Claim],
    outcomes: dict[object, PageOutput | PageError],
    report: BatchReport,
    elapsed_ms: int,
    languages: dict[uuid.UUID, str | None] | None = None,
) -> BatchReport:
    languages = languages or {}
    started = time.perf_counter()
    for c in claims:
        outcome = outcomes.get(c.page_id)
        if outcome is None:
            continue  # released above
        freed: list[uuid.UUID] = []
        copied: list[uuid.UUID] = []
        try:
            with session_scope(ctx.sessions) as s:
                if isinstance(outcome, PageError):
                    kept = write_failure(
                        s, c, code=outcome.code, message=outcome.message, freed=freed
                    )
                else:
                    kept = write_result(
                        s,
                        c,
                        text=outcome.text,
                        confidence=outcome.confidence,
                        lines=outcome.lines,
                        model=ctx.model_name,
                        provenance=(
                            ctx.read_by.in_language(
                                languages.get(c.page_id), ctx.settings.word_weight
                            )
                            if ctx.read_by
                            else None
                        ),
                        processing_ms=elapsed_ms,
                        size=outcome.size,
                        copied_into=copied,
                    )
        except SQLAlchemyError:
            # The page stays `running`; when its lease expires the sweeper re-queues it.
            log.exception("could not store page %s; its lease will expire", c.page_id)
            continue
        _send_freed(ctx, freed)
        report.reused += len(copied)
        report.succeeded += len(copied)
        if not kept:
            report.discarded += 1
            log.info("page %s: claim %d lost, result discarded", c.page_id, c.token)
        elif isinstance(outcome, PageError):
            report.failed += 1
            report.errors[outcome.code] += 1
            _finished(report, c)
        else:
            report.succeeded += 1
            report.lines += len(outcome.lines)
            _finished(report, c)
    report.write_ms = round((time.perf_counter() - started) * 1000)
    return report


def _release(ctx: BatchContext, c: Claim, code: str, message: str, report: BatchReport) -> None:
    freed: list[uuid.UUID] = []
    try:
        with session_scope(ctx.sessions) as s:
            status = release_for_retry(s, c, code=code, message=message, freed=freed)
    except SQLAlchemyError:
        log.exception("could not release page %s; its lease will expire", c.page_id)
        return
    _send_freed(ctx, freed)
    if status is not None:
        report.errors[code] += 1
    if status == "queued":
        report.requeued += 1
        report.requeued_ids.append(str(c.page_id))
        try:
            ctx.send([str(c.page_id)], backoff(ctx.settings, c.token))
        except Exception:
            log.exception("could not re-send page %s; the sweeper will", c.page_id)
    elif status == "failed":
        report.failed += 1
        _finished(report, c)


def _finished(report: BatchReport, c: Claim) -> None:
    """Count the page's time from submission to its result."""
    if c.created_at is not None:
        report.latencies.append(max(0.0, (utcnow() - c.created_at).total_seconds()))


def _jobs_of(s: Session, page_ids: list[uuid.UUID]) -> dict[uuid.UUID, JobOf]:
    if not page_ids:
        return {}
    rows = s.execute(
        select(Page.id, Job.mode, Job.language, Job.tenant_id, Job.reuse, Job.tenant_model_id)
        .join(Job, Page.job_id == Job.id)
        .where(Page.id.in_(page_ids))
    ).all()
    return {r.id: JobOf(r.mode, r.language, r.tenant_id, r.reuse, r.tenant_model_id) for r in rows}
