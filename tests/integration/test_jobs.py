from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.errors import PageError
from htrq.jobs.claims import claim_pages, write_result
from htrq.models import Page
from htrq.resources import JobResource, StatusCounts, job_status
from htrq.settings import Settings
from htrq.storage import DirectoryStore
from htrq.tenants import default_tenant
from tests.images import corrupt_png, page_png
from tests.pdfs import broken_pdf, encrypted_pdf, pdf_of
from worker.recognition.pipeline import LineOutput


class Recorder:
    """A send function that remembers what it was asked to enqueue."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.queues: list[str | None] = []

    def __call__(
        self, page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None
    ) -> None:
        self.sent.extend(page_ids)
        self.queues.append(queue)


def _submit(
    sessions: sessionmaker[Session], settings: Settings, send: Recorder, **kw: Any
) -> tuple[JobResource, bool]:
    kw.setdefault("uploads", [jobs.Upload(f"p{i}.png", page_png(f"page {i}")) for i in range(3)])
    return jobs.submit(
        sessions=sessions,
        tenant_id=default_tenant(sessions),
        storage=DirectoryStore(settings.storage_dir),
        send=send,
        settings=settings,
        **kw,
    )


def test_submit_creates_queued_pages_with_consecutive_indexes(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Each file becomes a queued page, indexes 0..n-1, and each page is sent once."""
    send = Recorder()
    job, created = _submit(sessions, settings, send)
    assert created and job.status == "queued"
    assert [p.index for p in job.pages] == [0, 1, 2]
    assert job.counts == StatusCounts(queued=3)
    assert sorted(send.sent) == sorted(str(p.id) for p in job.pages)
    with sessions() as s:
        rows = s.scalars(select(Page).where(Page.job_id == job.id)).all()
    store = DirectoryStore(settings.storage_dir)
    assert all(store.get(r.blob_key) for r in rows)
    assert {(r.frame, r.attempts, r.attempt_limit) for r in rows} == {(0, 0, 2)}


def test_pages_are_sent_only_after_the_commit(engine: Engine, settings: Settings) -> None:
    """When the broker gets a page id, another connection can already read the row."""
    seen: list[int] = []

    def send(page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None) -> None:
        with engine.connect() as other:
            for pid in page_ids:
                q = text("SELECT count(*) FROM pages WHERE id = :id")
                seen.append(other.execute(q, {"id": pid}).scalar_one())

    sessions = sessionmaker(engine)
    jobs.submit(
        sessions=sessions,
        tenant_id=default_tenant(sessions),
        storage=DirectoryStore(settings.storage_dir),
        send=send,
        settings=settings,
        uploads=[jobs.Upload("a.png", page_png()), jobs.Upload("b.png", page_png("b"))],
    )
    assert seen == [1, 1]


def test_a_repeat_under_the_same_key_returns_the_first_job(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Idempotency-Key and external_id both make a repeat return the job, not a new one."""
    send = Recorder()
    first, _ = _submit(sessions, settings, send, idempotency_key="k-1")
    again, created = _submit(sessions, settings, send, idempotency_key="k-1")
    assert (again.id, created) == (first.id, False)
    by_ext, _ = _submit(sessions, settings, send, external_id="dms-7")
    again, created = _submit(sessions, settings, send, external_id="dms-7")
    assert (again.id, created) == (by_ext.id, False)
    assert len(send.sent) == 6  # the repeats sent nothing


def test_other_files_under_a_used_key_conflict(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A different payload under a used key is refused, naming the existing job."""
    first, _ = _submit(sessions, settings, Recorder(), idempotency_key="k-2")
    with pytest.raises(jobs.IdempotencyConflict) as err:
        _submit(
            sessions,
            settings,
            Recorder(),
            idempotency_key="k-2",
            uploads=[jobs.Upload("x.png", page_png("other"))],
        )
    assert err.value.job_id == first.id


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "empty_file"), (b"plain text, not an image", "unsupported_format")],
)
def test_a_request_with_no_readable_file_stores_nothing(
    sessions: sessionmaker[Session], settings: Settings, data: bytes, code: str
) -> None:
    """When no file can be read the whole request is refused with the code; nothing is written."""
    send = Recorder()
    with pytest.raises(PageError) as err:
        _submit(sessions, settings, send, uploads=[jobs.Upload("bad.bin", data)])
    assert err.value.code == code and "bad.bin" in err.value.message
    assert send.sent == [] and not settings.storage_dir.exists()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (broken_pdf(), "invalid_pdf"),
        (encrypted_pdf(), "encrypted_pdf"),
        (b"plain text, not an image", "unsupported_format"),
        (b"", "empty_file"),
        (page_png(size=(4000, 3000)), "too_large"),  # over max_pixels, from its header
    ],
)
def test_an_unreadable_file_fails_only_its_own_page_at_once(
    sessions: sessionmaker[Session], settings: Settings, data: bytes, code: str
) -> None:
    """[good, bad, good]: three pages; the bad one is failed with its code and never sent."""
    settings = settings.model_copy(update={"max_pixels": 10_000_000})
    send = Recorder()
    uploads = [
        jobs.Upload("a.png", page_png("a")),
        jobs.Upload("bad.pdf", data),
        jobs.Upload("b.png", page_png("b")),
    ]
    job, created = _submit(sessions, settings, send, uploads=uploads)
    assert created
    assert [(p.index, p.status) for p in job.pages] == [
        (0, "queued"),
        (1, "failed"),
        (2, "queued"),
    ]
    assert job.counts == StatusCounts(queued=2, failed=1)
    assert job.status == "queued"  # no worker has started it
    assert sorted(send.sent) == sorted(str(job.pages[i].id) for i in (0, 2))
    bad = jobs.get_page(
        sessions=sessions, tenant_id=default_tenant(sessions), job_id=job.id, index=1
    )
    assert bad.error is not None and bad.error.code == code and bad.error.message
    assert (bad.filename, bad.frame, bad.attempts, bad.started_at) == ("bad.pdf", 0, 0, None)
    assert bad.finished_at is not None


def test_a_corrupt_image_is_accepted_and_left_to_the_worker(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A file whose header reads is a page; decoding (and failing) happens in the worker."""
    job, _ = _submit(sessions, settings, Recorder(), uploads=[jobs.Upload("c.png", corrupt_png())])
    assert len(job.pages) == 1


def test_oversized_files_are_refused(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Files over HTRQ_MAX_UPLOAD_BYTES get too_large."""
    small = settings.model_copy(update={"max_upload_bytes": 10})
    with pytest.raises(PageError) as err:
        _submit(sessions, small, Recorder())
    assert err.value.code == "too_large"


def test_too_many_pages_in_all_refuse_the_request(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Pages over HTRQ_MAX_PAGES_PER_JOB, across files or in one, refuse the whole request."""
    limited = settings.model_copy(update={"max_pages_per_job": 2})
    three = [jobs.Upload(f"p{i}.png", page_png()) for i in range(3)]
    pdf = jobs.Upload("long.pdf", pdf_of([Image.new("L", (50, 50), 255)] * 3))
    for uploads in (three, [pdf]):
        with pytest.raises(PageError) as err:
            _submit(sessions, limited, Recorder(), uploads=uploads)
        assert err.value.code == "too_many_pages"
    assert not settings.storage_dir.exists()


def test_retry_requeues_only_failed_pages_and_keeps_attempts(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Retry re-sends failed pages, raises their attempt limit and never lowers attempts."""
    job, _ = _submit(sessions, settings, Recorder())
    failed, done = job.pages[0].id, job.pages[1].id
    with sessions() as s, s.begin():
        s.execute(
            update(Page)
            .where(Page.id == failed)
            .values(status="failed", attempts=2, error_code="model_error")
        )
        s.execute(update(Page).where(Page.id == done).values(status="succeeded", attempts=1))
    send = Recorder()
    n = jobs.retry(
        sessions=sessions,
        tenant_id=default_tenant(sessions),
        send=send,
        settings=settings,
        job_id=job.id,
    )
    assert n == 1 and send.sent == [str(failed)]
    with sessions() as s:
        page = s.get(Page, failed)
        assert page is not None
        assert (page.status, page.attempts, page.attempt_limit, page.error_code) == (
            "queued",
            2,
            4,
            None,
        )


def test_unknown_ids_raise_not_found(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Unknown and malformed job ids, and missing page indexes, raise NotFound."""
    job, _ = _submit(sessions, settings, Recorder())
    for call in (
        lambda: jobs.get_job(
            sessions=sessions, tenant_id=default_tenant(sessions), job_id="not-a-uuid"
        ),
        lambda: jobs.get_job(
            sessions=sessions,
            tenant_id=default_tenant(sessions),
            job_id="00000000-0000-0000-0000-000000000000",
        ),
        lambda: jobs.get_page(
            sessions=sessions, tenant_id=default_tenant(sessions), job_id=job.id, index=3
        ),
        lambda: jobs.retry(
            sessions=sessions,
            tenant_id=default_tenant(sessions),
            send=Recorder(),
            settings=settings,
            job_id="x",
        ),
    ):
        with pytest.raises(jobs.NotFound):
            call()


@pytest.mark.parametrize(
    ("counts", "started", "status"),
    [
        (StatusCounts(queued=2), False, "queued"),
        (StatusCounts(queued=2, failed=1), False, "queued"),  # failed at submit
        (StatusCounts(queued=2, failed=1), True, "running"),  # failed by a worker
        (StatusCounts(queued=1, running=1), True, "running"),
        (StatusCounts(queued=1, succeeded=1), True, "running"),
        (StatusCounts(succeeded=2), True, "succeeded"),
        (StatusCounts(failed=2), True, "failed"),
        (StatusCounts(failed=2), False, "failed"),  # every upload unreadable
        (StatusCounts(succeeded=1, failed=1), True, "partial"),
    ],
)
def test_job_status_is_derived_from_its_pages(
    counts: StatusCounts, started: bool, status: str
) -> None:
    """Partial means all pages finished and some failed; a job runs once a worker starts it."""
    assert job_status(counts, started=started) == status


def test_lines_under_the_review_threshold_say_needs_review(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """needs_review follows the threshold it is read with (HTRQ_REVIEW_BELOW), and the page
    counts its flagged lines."""
    job, _ = _submit(sessions, settings, Recorder())
    confidences = [0.99, 0.5, 0.7]  # the default threshold is 0.75
    with sessions.begin() as s:
        (claim,) = claim_pages(s, [job.pages[0].id], lease_seconds=60)
        lines = [
            LineOutput(text=f"l{i}", confidence=c, bbox=(0, i, 9, i + 1))
            for i, c in enumerate(confidences)
        ]
        assert write_result(
            s, claim, text="x", confidence=0.8, lines=lines, model="m", processing_ms=1
        )
    default = jobs.get_page(
        sessions=sessions, tenant_id=default_tenant(sessions), job_id=job.id, index=0
    )
    assert [ln.needs_review for ln in default.lines] == [False, True, True]
    assert default.lines_to_review == 2
    lenient = jobs.get_page(
        sessions=sessions,
        tenant_id=default_tenant(sessions),
        job_id=job.id,
        index=0,
        review_below=0.6,
    )
    assert [ln.needs_review for ln in lenient.lines] == [False, True, False]
    assert lenient.model_dump()["lines_to_review"] == 1
