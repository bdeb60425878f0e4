"""Finished pages for review tests, made through the service's own functions: the upload is
submitted (and stored) by the job service, claimed, and its result written with
``htrq.jobs.claims.write_result``, as a worker writes it, with lines chosen by the test."""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.db import session_scope
from htrq.jobs.claims import claim_pages, write_result
from htrq.jobs.uploads import Upload
from htrq.models import Page
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.words import Word, estimate_words


@dataclass(frozen=True)
class Read:
    """One line as a worker would store it."""

    text: str
    confidence: float
    bbox: tuple[int, int, int, int]
    polygon: list[tuple[int, int]] | None = None
    baseline: list[tuple[int, int]] | None = None
    words: list[Word] | None = None
    box_source: str | None = None


#: Three lines of a 480 x 200 letter: the second and third are doubtful (under the 0.75
#: threshold), the third has an outline. The first two have words placed by an alignment, the
#: second's "truIy" doubtful; the third has none (a line stored before words were).
LETTER_LINES = (
    Read(
        "Dear Sir,", 0.97, (20, 20, 200, 60),
        words=[Word(text="Dear", box=[24, 28, 80, 52], confidence=0.98),
               Word(text="Sir,", box=[92, 28, 150, 55], confidence=0.96)],
        box_source="ctc",
    ),
    Read(
        "yours truIy", 0.55, (20, 80, 300, 120),
        words=[Word(text="yours", box=[24, 88, 110, 112], confidence=0.9),
               Word(text="truIy", box=[124, 86, 210, 114], confidence=0.31)],
        box_source="ctc",
    ),
    Read("J. Smith", 0.62, (20, 140, 220, 180), [(20, 140), (220, 142), (220, 180), (20, 178)]),
)  # fmt: skip


def letter_png(lines: Sequence[Read] = LETTER_LINES, size: tuple[int, int] = (480, 200)) -> bytes:
    """A page with each line's text written in its box."""
    im = Image.new("L", size, 255)
    draw = ImageDraw.Draw(im)
    for ln in lines:
        draw.text((ln.bbox[0] + 4, ln.bbox[1] + 10), ln.text, fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def submit(
    sessions: sessionmaker[Session],
    storage: BlobStore,
    settings: Settings,
    tenant_id: uuid.UUID,
    files: Sequence[tuple[str, bytes]],
    *,
    mode: str = "page",
) -> uuid.UUID:
    """Submit ``files`` as one job (the queue messages are dropped: no worker reads them)."""
    job, _ = jobs.submit(
        sessions=sessions,
        storage=storage,
        send=lambda ids, countdown=0, queue=None: None,
        settings=settings,
        tenant_id=tenant_id,
        uploads=[Upload(name, data) for name, data in files],
        mode=mode,
    )
    return job.id


def finish(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    index: int,
    lines: Sequence[Read],
    size: tuple[int, int],
) -> None:
    """Claim page ``index`` of the job and store ``lines`` as its result."""
    with session_scope(sessions) as s:
        page_id = s.scalars(select(Page.id).where(Page.job_id == job_id, Page.index == index)).one()
        (claim,) = claim_pages(s, [page_id], lease_seconds=60)
        assert write_result(
            s,
            claim,
            text="\n".join(ln.text for ln in lines),
            confidence=sum(ln.confidence for ln in lines) / max(1, len(lines)),
            lines=lines,
            model="test-model",
            processing_ms=1,
            size=size,
        )


def finished_letter(
    sessions: sessionmaker[Session],
    storage: BlobStore,
    settings: Settings,
    tenant_id: uuid.UUID,
    *,
    queued_pages: int = 0,
) -> uuid.UUID:
    """A job whose page 0 is the letter, succeeded with :data:`LETTER_LINES`, followed by
    ``queued_pages`` pages still queued."""
    files = [("letter.png", letter_png())]
    files += [(f"more-{i}.png", letter_png(LETTER_LINES[:1])) for i in range(queued_pages)]
    job_id = submit(sessions, storage, settings, tenant_id, files)
    finish(sessions, job_id, 0, LETTER_LINES, (480, 200))
    return job_id


def handwritten_letter(
    seed: int = 7, size: tuple[int, int] = (1400, 1000)
) -> tuple[bytes, list[Read]]:
    """A synthetic handwritten page and a plausible reading of it: most lines right and
    confident, every third with a few letters wrong and a low confidence, odd lines with an
    outline (as the classical segmenter gives), even ones with a box only."""
    import random

    from worker.training.synth_pages import render_page

    page = render_page(seed, size=size, max_skew=0.0)
    rng = random.Random(seed)
    lines = []
    for i, ln in enumerate(page.lines):
        text, confidence = ln.text, rng.uniform(0.92, 0.99)
        if i % 3 == 1:
            chars = list(text)
            for at in rng.sample(range(len(chars)), k=min(2, len(chars))):
                chars[at] = rng.choice("aeinrstuv")
            text, confidence = "".join(chars), rng.uniform(0.45, 0.7)
        x0, y0, x1, y1 = ln.bbox
        outline = [(x0, y0), (x1, y0 + 2), (x1, y1), (x0, y1 - 2)] if i % 2 else None
        words = None
        if text != ln.text:  # the misread words doubtful, the others not
            words = estimate_words(text, ln.bbox, 0.95)
            for w, truth in zip(words, ln.text.split(), strict=False):
                w["confidence"] = 0.95 if w["text"] == truth else 0.4
        source = "ctc" if words else None
        lines.append(Read(text, round(confidence, 3), ln.bbox, outline, None, words, source))
    buf = io.BytesIO()
    page.image.save(buf, "PNG")
    return buf.getvalue(), lines
