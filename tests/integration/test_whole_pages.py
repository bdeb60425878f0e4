"""Whole pages through jobs and the batch worker: PDF pages in order, each read line by line."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.models import Line, Page
from htrq.settings import Settings
from htrq.storage import DirectoryStore
from htrq.tenants import default_tenant
from tests.pdfs import broken_pdf, pdf_of, text_pdf
from worker.recognition.pipeline import build_pipeline
from worker.recognition.recognizer import Recognizer
from worker.serving.batch import BatchContext, process_batch
from worker.serving.embedded import LocalQueue
from worker.training.synth_pages import SynthPage, render_page

#: Seconds each (whole pages and PDFs rendered and read): left out of the fast subset.
pytestmark = pytest.mark.slow


def submit_and_process(
    sessions: sessionmaker[Session],
    settings: Settings,
    recognizer: Recognizer,
    files: list[tuple[str, bytes]],
) -> list[Page]:
    """Submit ``files`` as one job, read every page with the page segmenter, return the pages."""
    ctx = BatchContext(
        settings=settings,
        sessions=sessions,
        storage=DirectoryStore(settings.storage_dir),
        pipeline=build_pipeline(settings.model_copy(update={"segmenter": "classical"}), recognizer),
        model_name="tiny",
        send=LocalQueue(),
    )
    job, _ = jobs.submit(
        sessions=sessions,
        tenant_id=default_tenant(sessions),
        storage=ctx.storage,
        send=ctx.send,
        settings=settings,
        uploads=[jobs.Upload(name, data) for name, data in files],
    )
    ids = [str(p.id) for p in job.pages]
    process_batch(ids, ctx)
    with sessions() as s:
        return [s.get_one(Page, uuid.UUID(i)) for i in ids]


def line_counts(sessions: sessionmaker[Session], pages: Sequence[Page]) -> list[int]:
    with sessions() as s:
        return [
            s.scalar(select(func.count()).select_from(Line).where(Line.page_id == p.id)) or 0
            for p in pages
        ]


def test_a_three_page_pdf_becomes_three_ordered_pages_of_lines(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """Each PDF page is a page of the job, in order, with the lines its own image holds."""
    synthetic = [render_page(seed, size=(1000, 1300)) for seed in (20, 22, 25)]
    truth = [len(p.lines) for p in synthetic]
    assert len(set(truth)) == 3  # the pages are told apart by their line counts
    pdf = pdf_of([p.image for p in synthetic], resolution=300)  # rendered back at 300 dpi
    pages = submit_and_process(
        sessions, settings, recognizer, [("letter.pdf", pdf), ("note.png", _png(synthetic[0]))]
    )
    assert [(p.index, p.frame, p.filename) for p in pages] == [
        (0, 0, "letter.pdf"),
        (1, 1, "letter.pdf"),
        (2, 2, "letter.pdf"),
        (3, 0, "note.png"),
    ]
    assert [p.status for p in pages] == ["succeeded"] * 4
    assert line_counts(sessions, pages) == [*truth, truth[0]]


def test_a_bad_pdf_page_fails_alone(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """A PDF page too large to render fails with too_large; the file's other pages succeed."""
    pdf = text_pdf([(400, 200), (200_000, 200_000), (400, 200)])
    pages = submit_and_process(sessions, settings, recognizer, [("mixed.pdf", pdf)])
    assert [(p.status, p.error_code) for p in pages] == [
        ("succeeded", None),
        ("failed", "too_large"),
        ("succeeded", None),
    ]
    assert line_counts(sessions, pages) == [3, 0, 3]


def test_a_broken_pdf_among_images_fails_at_once_and_the_images_are_read(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """[image, broken PDF, image]: the PDF's page is failed at submit, the images succeed."""
    image = _png(render_page(20, size=(1000, 1300)))
    files = [("a.png", image), ("b.pdf", broken_pdf()), ("c.png", image)]
    pages = submit_and_process(sessions, settings, recognizer, files)
    assert [(p.status, p.error_code, p.attempts) for p in pages] == [
        ("succeeded", None, 1),
        ("failed", "invalid_pdf", 0),  # never claimed: it was not sent to the queue
        ("succeeded", None, 1),
    ]
    assert (
        jobs.get_job(
            sessions=sessions, tenant_id=default_tenant(sessions), job_id=pages[0].job_id
        ).status
        == "partial"
    )


def test_page_size_and_line_outlines_are_stored(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """A read page keeps its image size; its lines keep the segmenter's polygon and baseline."""
    synthetic = render_page(22, size=(1000, 1300))
    (page,) = submit_and_process(sessions, settings, recognizer, [("p.png", _png(synthetic))])
    assert (page.width, page.height) == (1000, 1300)
    resource = jobs.get_page(
        sessions=sessions, tenant_id=default_tenant(sessions), job_id=page.job_id, index=0
    )
    assert (resource.width, resource.height) == (1000, 1300)
    with sessions() as s:
        lines = s.scalars(select(Line).where(Line.page_id == page.id).order_by(Line.index)).all()
    assert len(lines) == len(synthetic.lines)
    for ln in lines:
        assert ln.polygon is not None and ln.baseline is not None
        polygon, baseline = json.loads(ln.polygon), json.loads(ln.baseline)
        assert len(polygon) >= 3 and len(baseline) >= 2
        xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
        assert (min(xs), min(ys), max(xs), max(ys)) == (ln.x0, ln.y0, ln.x1, ln.y1)


def _png(page: SynthPage) -> bytes:
    buf = io.BytesIO()
    page.image.save(buf, "PNG")
    return buf.getvalue()
