"""Process one group of page ids: claim, load, run the pipeline, write each page.

Shared by the Celery batch task and the in-process queue of ``htrq transcribe``, so both run
the same code between the broker and the database.
"""

from __future__ import annotations

import logging
import resource
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.errors import PageError, public_message
from htrq.jobs.claims import (
    Claim,
    ReadBy,
    claim_pages,
    release_for_retry,
    release_to_read_alone,
    write_failure,
    write_result,
)
from htrq.models import Job, Page, utcnow
from htrq.queue import Send
from htrq.settings import Settings
from htrq.storage import BlobMissing, BlobStore, StorageUnavailable
from worker.recognition.pipeline import PageInput, PageOutput, Pipeline
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
    claimed = _claim(ctx, _parse_ids(page_ids), report)
    if claimed is None:
        return report  # the database is down: the ids were sent again for later
    claims, jobs = claimed
    report.claimed = len(claims)
    if not claims:
        return report
    claims = _one_alone(ctx, claims, report)
    outcomes: dict[object, PageOutput | PageError] = {}
    inputs = _load_inputs(ctx, claims, jobs, outcomes, report)
    together = [c for c in claims if c.page_id in inputs and not c.read_alone]
    alone = [c for c in claims if c.page_id in inputs and c.read_alone]
    started = time.perf_counter()
    for group in [g for g in (together, alone) if g]:
        _read_group(ctx, group, [inputs[c.page_id] for c in group], outcomes, report)
    report.pipeline_ms = round((time.perf_counter() - started) * 1000)
    languages = {key: page.language for key, page in inputs.items()}
    return _finish(ctx, claims, outcomes, report, report.pipeline_ms, languages)


def _parse_ids(page_ids: Sequence[str]) -> list[uuid.UUID]:
    ids = []
    for raw in page_ids:
        try:
            ids.append(uuid.UUID(str(raw)))
        except ValueError:
            log.warning("dropping a message with a malformed page id %r", raw)
    return ids


def _claim(
    ctx: BatchContext, ids: list[uuid.UUID], report: BatchReport
) -> tuple[list[Claim], dict[uuid.UUID, tuple[str, str | None]]] | None:
    """The pages this batch may read and each one's job mode and language; None when the
    database could not be reached (the ids are then sent again, later each time it stays
    down)."""
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


def _load_inputs(
    ctx: BatchContext,
    claims: list[Claim],
    jobs: dict[uuid.UUID, tuple[str, str | None]],
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
            mode, language = jobs[c.page_id]
            inputs[c.page_id] = PageInput(
                key=c.page_id, data=data, frame=c.frame, mode=mode, language=language
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
    try:
        with session_scope(ctx.sessions) as s:
            kept = release_to_read_alone(s, c)
    except SQLAlchemyError:
        log.exception("could not release page %s; its lease will expire", c.page_id)
        return
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
        try:
            with session_scope(ctx.sessions) as s:
                if isinstance(outcome, PageError):
                    kept = write_failure(s, c, code=outcome.code, message=outcome.message)
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
                    )
        except SQLAlchemyError:
            # The page stays `running`; when its lease expires the sweeper re-queues it.
            log.exception("could not store page %s; its lease will expire", c.page_id)
            continue
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
    try:
        with session_scope(ctx.sessions) as s:
            status = release_for_retry(s, c, code=code, message=message)
    except SQLAlchemyError:
        log.exception("could not release page %s; its lease will expire", c.page_id)
        return
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


def _jobs_of(s: Session, page_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str | None]]:
    """Each page's job mode and language."""
    if not page_ids:
        return {}
    rows = s.execute(
        select(Page.id, Job.mode, Job.language)
        .join(Job, Page.job_id == Job.id)
        .where(Page.id.in_(page_ids))
    ).all()
    return {r.id: (r.mode, r.language) for r in rows}
