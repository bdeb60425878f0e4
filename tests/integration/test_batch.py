from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.jobs.claims import claim_pages, sweep, write_result
from htrq.models import Line, Page, utcnow
from htrq.queue import CelerySender, make_celery, page_queue
from htrq.settings import Settings
from htrq.storage import DirectoryStore, open_store
from htrq.tenants import default_tenant
from tests.images import corrupt_png, multipage_tiff, page_png
from worker.recognition.pipeline import LineOutput, Pipeline
from worker.recognition.reading import LineReader, Recognize
from worker.recognition.recognizer import Recognizer
from worker.serving.batch import BatchContext, process_batch
from worker.serving.embedded import LocalQueue
from worker.serving.sweeper import sweep_once


def _context(
    sessions: sessionmaker[Session], settings: Settings, recognize: Recognize
) -> BatchContext:
    return BatchContext(
        settings=settings,
        sessions=sessions,
        storage=DirectoryStore(settings.storage_dir),
        pipeline=Pipeline(read=LineReader(recognize, max_aspect=12.0)),
        model_name="tiny",
        send=LocalQueue(),
    )


def _submit(ctx: BatchContext, files: list[bytes]) -> list[str]:
    job, _ = jobs.submit(
        sessions=ctx.sessions,
        tenant_id=default_tenant(ctx.sessions),
        storage=ctx.storage,
        send=ctx.send,
        settings=ctx.settings,
        uploads=[jobs.Upload(f"{i}.png", d) for i, d in enumerate(files)],
    )
    return [str(p.id) for p in job.pages]


def _pages(sessions: sessionmaker[Session], ids: Sequence[str]) -> list[Page]:
    with sessions() as s:
        return [s.get_one(Page, p) for p in map(__import__("uuid").UUID, ids)]


def _line_counts(sessions: sessionmaker[Session], ids: Sequence[str]) -> list[int]:
    with sessions() as s:
        return [
            s.scalar(select(func.count()).select_from(Line).where(Line.page_id == p.id)) or 0
            for p in _pages(sessions, ids)
        ]


class Broken:
    """A recognizer that always fails, as a model on a sick GPU would."""

    def __call__(self, crops: Sequence[Image.Image]) -> list[object]:
        raise RuntimeError("CUDA error: device-side assert")


def test_a_group_is_read_and_stored_with_the_corrupt_page_failed(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """Good pages succeed with lines and confidence; the corrupt one fails with its code."""
    ctx = _context(sessions, settings, recognizer)
    ids = _submit(ctx, [page_png("one"), corrupt_png(), page_png("three")])
    report = process_batch(ids, ctx)
    assert (report.claimed, report.succeeded, report.failed) == (3, 2, 1)
    good, bad, good2 = _pages(sessions, ids)
    for p in (good, good2):
        assert (p.status, p.attempts, p.model) == ("succeeded", 1, "tiny")
        assert p.text is not None and p.confidence is not None and 0 <= p.confidence <= 1
        assert p.started_at and p.finished_at and p.lease_until is None
    assert (bad.status, bad.error_code, bad.attempts) == ("failed", "invalid_image", 1)
    assert _line_counts(sessions, ids) == [1, 0, 1]


def test_the_report_counts_lines_error_codes_latencies_and_pipeline_runs(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """What the worker's metrics count: lines stored, each page's code and time from
    submission to result, and one pipeline run of the group's three pages."""
    ctx = _context(sessions, settings, recognizer)
    ids = _submit(ctx, [page_png("one"), corrupt_png(), page_png("three")])
    with sessions() as s, s.begin():  # submitted 100 s ago (and queued just now)
        ago = utcnow() - timedelta(seconds=100)
        s.execute(
            update(Page)
            .where(Page.id.in_([p.id for p in _pages(sessions, ids)]))
            .values(created_at=ago)
        )
    report = process_batch(ids, ctx)
    assert report.lines == 2 and report.errors == {"invalid_image": 1}
    stored = sorted((p.finished_at - p.created_at).total_seconds() for p in _pages(sessions, ids))
    assert len(report.latencies) == 3 and min(stored) > 100
    for counted, kept in zip(sorted(report.latencies), stored, strict=True):
        assert kept <= counted < kept + 1  # read just after the page's row was written
    (run,) = report.groups
    assert (run.pages, run.lines) == (3, 2) and 0 < run.seconds < 60


def test_a_multipage_file_becomes_consecutive_pages_read_by_frame(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """A 3-frame TIFF and a PNG give pages 0..3 on two blobs, each frame read on its own."""
    ctx = _context(sessions, settings, recognizer)
    ids = _submit(ctx, [multipage_tiff(3), page_png()])
    pages = _pages(sessions, ids)
    assert [(p.index, p.frame) for p in pages] == [(0, 0), (1, 1), (2, 2), (3, 0)]
    assert len({p.blob_key for p in pages}) == 2
    assert process_batch(ids, ctx).succeeded == 4
    assert _line_counts(sessions, ids) == [1, 1, 1, 1]


def test_duplicate_messages_are_processed_once(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """The same id twice in a group, and again later, gives one claim and one set of lines."""
    ctx = _context(sessions, settings, recognizer)
    a, b = _submit(ctx, [page_png("a"), page_png("b")])
    assert process_batch([a, a, b], ctx).claimed == 2
    assert process_batch([a, b, "not-an-id"], ctx).claimed == 0
    assert [p.attempts for p in _pages(sessions, [a, b])] == [1, 1]
    assert _line_counts(sessions, [a, b]) == [1, 1]


def test_a_result_from_a_lost_claim_is_thrown_away(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """After the sweeper takes a page back, the old claim's write changes nothing."""
    ctx = _context(sessions, settings, Broken())
    (pid,) = _submit(ctx, [page_png()])
    with sessions() as s, s.begin():
        (old,) = claim_pages(s, [_pages(sessions, [pid])[0].id], lease_seconds=1)
    with sessions() as s, s.begin():
        swept = sweep(s, now=utcnow() + timedelta(seconds=5))
    assert old.page_id in swept.requeued
    with sessions() as s, s.begin():
        (new,) = claim_pages(s, [old.page_id], lease_seconds=60)
        line = LineOutput("late", 0.5, (0, 0, 1, 1))
        kw = {"text": "late", "confidence": 0.5, "lines": [line], "model": "m", "processing_ms": 1}
        assert not write_result(s, old, **kw)
        assert new.token == old.token + 1
        assert write_result(s, new, **kw)
    assert _line_counts(sessions, [pid]) == [1]


def test_a_redelivered_message_takes_over_an_expired_lease_only(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A message redelivered after its worker died claims the page once the dead claim's
    lease has run out, with no sweep in between; while the lease holds it claims nothing, and
    a page with its attempts spent is left to the sweeper."""
    ctx = _context(sessions, settings, Broken())
    held, expired, spent = _submit(ctx, [page_png("held"), page_png("expired"), page_png("x")])
    ids = [_pages(sessions, [i])[0].id for i in (held, expired, spent)]
    with sessions() as s, s.begin():
        assert len(claim_pages(s, ids, lease_seconds=60)) == 3
        # The worker that claimed them died; two leases ran out, one page used its attempts.
        s.execute(
            update(Page)
            .where(Page.id.in_(ids[1:]))
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
        s.execute(update(Page).where(Page.id == ids[2]).values(attempt_limit=1))
    with sessions() as s, s.begin():
        (again,) = claim_pages(s, ids, lease_seconds=60)  # the redelivered messages
    assert again.page_id == ids[1] and again.token == 2
    with sessions() as s, s.begin():
        assert claim_pages(s, ids, lease_seconds=60) == []  # the new lease holds
    assert [(p.status, p.attempts) for p in _pages(sessions, [held, expired, spent])] == [
        ("running", 1),
        ("running", 2),
        ("running", 1),
    ]
    with sessions() as s, s.begin():
        swept = sweep(s, now=utcnow())
    assert (swept.failed, swept.requeued) == ([ids[2]], [])


def test_transient_errors_requeue_then_fail_with_the_last_error(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A model error re-sends the page with backoff until its attempts are spent."""
    ctx = _context(sessions, settings, Broken())
    (pid,) = _submit(ctx, [page_png()])
    queue = ctx.send
    assert isinstance(queue, LocalQueue)
    queue.take(10)
    first = process_batch([pid], ctx)
    assert first.requeued_ids == [pid] and len(queue) == 1
    # The error is counted though the page goes back; it has not finished yet.
    assert first.errors == {"model_error": 1} and first.latencies == []
    assert [(g.pages, g.lines) for g in first.groups] == [(1, 0)]
    (page,) = _pages(sessions, [pid])
    assert (page.status, page.error_code, page.attempts) == ("queued", "model_error", 1)
    second = process_batch(queue.take(10), ctx)
    assert second.failed == 1 and len(queue) == 0
    assert second.errors == {"model_error": 1} and len(second.latencies) == 1
    (page,) = _pages(sessions, [pid])
    assert (page.status, page.error_code, page.attempts) == ("failed", "model_error", 2)
    assert "device-side assert" in (page.error_message or "")


def test_a_missing_blob_fails_the_page(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer, tmp_path: Path
) -> None:
    """A page whose stored file is gone fails with blob_missing instead of looping."""
    ctx = _context(sessions, settings, recognizer)
    (pid,) = _submit(ctx, [page_png()])
    ctx.storage = DirectoryStore(tmp_path / "empty")
    process_batch([pid], ctx)
    assert _pages(sessions, [pid])[0].error_code == "blob_missing"


def test_a_store_that_does_not_answer_puts_the_pages_back(
    sessions: sessionmaker[Session],
    settings: Settings,
    unreachable_s3_settings: Settings,
    recognizer: Recognizer,
) -> None:
    """Pages whose store is down go back to the queue (storage_unavailable), not to failed;
    they are read once it answers again."""
    ctx = _context(sessions, settings, recognizer)
    ids = _submit(ctx, [multipage_tiff(2), page_png()])
    queue = ctx.send
    assert isinstance(queue, LocalQueue)
    queue.take(10)
    ctx.storage = open_store(unreachable_s3_settings)
    report = process_batch(ids, ctx)
    assert (report.claimed, report.failed, sorted(report.requeued_ids)) == (3, 0, sorted(ids))
    for page in _pages(sessions, ids):
        assert (page.status, page.error_code, page.attempts) == ("queued", "storage_unavailable", 1)
        assert "127.0.0.1" not in (page.error_message or "")
    ctx.storage = open_store(settings)
    assert process_batch(queue.take(10), ctx).succeeded == 3


def test_the_last_attempts_error_does_not_promise_another(
    sessions: sessionmaker[Session], settings: Settings, unreachable_s3_settings: Settings
) -> None:
    """A page whose store stays down: after its first attempt the error says it will be tried
    again; after its last (of HTRQ_MAX_ATTEMPTS=2) it says that was the last, not that."""
    ctx = _context(sessions, settings, Broken())
    (pid,) = _submit(ctx, [page_png()])
    queue = ctx.send
    assert isinstance(queue, LocalQueue)
    queue.take(10)
    ctx.storage = open_store(unreachable_s3_settings)
    process_batch([pid], ctx)
    (page,) = _pages(sessions, [pid])
    assert page.status == "queued" and page.error_message.endswith("it will be tried again")
    process_batch(queue.take(10), ctx)
    (page,) = _pages(sessions, [pid])
    assert (page.status, page.error_code, page.attempts) == ("failed", "storage_unavailable", 2)
    assert "tried again" not in page.error_message and "last attempt" in page.error_message


def test_sweeper_requeues_expired_leases_and_fails_spent_ones(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Expired leases go back to queued, or to failed (worker_lost) with no attempts left."""
    ctx = _context(sessions, settings, Broken())
    a, b = _submit(ctx, [page_png("a"), page_png("b")])
    pa, pb = (p.id for p in _pages(sessions, [a, b]))
    with sessions() as s, s.begin():
        claim_pages(s, [pa, pb], lease_seconds=1)
        s.get_one(Page, pb).attempts = 2  # b has used its last attempt
    with sessions() as s, s.begin():
        swept = sweep(s, now=utcnow() + timedelta(seconds=5))
    assert pa in swept.requeued and pb in swept.failed
    page_a, page_b = _pages(sessions, [a, b])
    assert (page_a.status, page_b.status, page_b.error_code) == ("queued", "failed", "worker_lost")


@pytest.mark.usefixtures("broker_url")
def test_sweeper_resends_lost_messages_only_when_the_queue_is_empty(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Pages queued past the grace period are re-sent to Redis while nothing waits there."""
    ctx = _context(sessions, settings, Broken())
    (pid,) = _submit(ctx, [page_png()])
    stale = settings.model_copy(update={"queued_grace_seconds": 0.001})
    sender = CelerySender(make_celery(settings))
    client = redis.Redis.from_url(settings.broker_url or "")
    queue = page_queue(settings, model=None, tenant_id=default_tenant(sessions))
    swept = sweep_once(sessions=sessions, sender=sender, settings=stale)
    # Other tests' committed rows may be swept too; this page must be among them.
    assert pid in [str(i) for i in swept.resend]
    assert sender.queue_depth() == len(swept.resend)  # each page on its own tenant's queue
    assert client.llen(queue) >= 1  # this one on the default tenant's
    # Now messages wait in the queue: a long wait is no proof of loss.
    (page,) = _pages(sessions, [pid])
    with sessions() as s, s.begin():
        s.get_one(Page, page.id).queued_at = utcnow() - timedelta(hours=1)
    assert sweep_once(sessions=sessions, sender=sender, settings=stale).resend == []
    assert sender.queue_depth() == len(swept.resend)  # each page on its own tenant's queue


class Speaking:
    """Reads each crop as the language it was read in."""

    def __init__(self) -> None:
        self.languages: list[str | None] = []

    def __call__(self, crops: Sequence[Image.Image], language: str | None = None) -> list[object]:
        self.languages.append(language)
        return [LineOutput(text=f"{language}", confidence=0.9, bbox=(0, 0, 1, 1)) for _ in crops]


def test_each_page_is_read_in_its_job_s_language_and_says_so(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Two jobs in one group, French and none: each page's lines are read in its job's
    language and its provenance records it (none for the job without)."""
    import json

    from htrq.jobs.claims import ReadBy

    s = settings.model_copy(update={"languages": "en,fr", "word_weight": 0.3})
    rec = Speaking()
    ctx = _context(sessions, s, rec)
    ctx.read_by = ReadBy("abc", {"num_beams": 1}, "test")
    ids = []
    for language in ("fr", "none"):
        job, _ = jobs.submit(
            sessions=sessions, tenant_id=default_tenant(sessions), storage=ctx.storage,
            send=ctx.send, settings=s, uploads=[jobs.Upload("p.png", page_png(language))],
            language=language,
        )  # fmt: skip
        ids.append(str(job.pages[0].id))
    process_batch(ids, ctx)
    fr, plain = _pages(sessions, ids)
    assert sorted(rec.languages, key=str) == [None, "fr"]
    assert (fr.text, plain.text) == ("fr", "None")
    assert json.loads(fr.decoding or "{}")["language"] == "fr"
    assert json.loads(plain.decoding or "{}")["language"] == "none"
