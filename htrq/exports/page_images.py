"""A stored page as an image for people to look at (the review page), in the frame its line
coordinates refer to.

The worker reads a page after :func:`htrq.inputs.render_page` and EXIF orientation
(``worker.segmentation.preprocess.normalise_page``), and stores line coordinates in that
upright image; this renders the same way, keeping the scan's colours, so the outlines fall
on their lines.
PDF pages are rendered by this process's :func:`htrq.rendering.pdf_renderer`, never in the
calling (request) thread.
"""

from __future__ import annotations

import io
import uuid

from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from htrq.inputs import render_stored_page
from htrq.jobs import NotFound, PageNotSucceeded, check_page_index, owned_job
from htrq.models import Page
from htrq.rendering import pdf_renderer
from htrq.settings import Settings
from htrq.storage import BlobStore

#: Pages up to this many pixels are sent as PNG (lossless: line images, small scans); larger
#: ones as JPEG, a tenth of the bytes for a 300 DPI page and quick to encode.
PNG_MAX_PIXELS = 4_000_000
JPEG_QUALITY = 88


def upright_page(data: bytes, frame: int, settings: Settings) -> Image.Image:
    """Page ``frame`` of a stored upload, decoded and upright, as the worker saw it before
    normalising (a PDF page at ``HTRQ_PDF_DPI``, which its ``dpi`` says).

    Raises ``PageError`` as :func:`htrq.inputs.render_page` does, and
    :class:`htrq.rendering.RenderUnavailable` when no PDF renderer answered in time.
    """
    # In colour: people see the page as scanned (the worker reads a PDF page in grey).
    im = render_stored_page(data, frame, settings, render=pdf_renderer(settings).render, grey=False)
    im.info.setdefault("dpi", (settings.pdf_dpi, settings.pdf_dpi))
    return ImageOps.exif_transpose(im)


def page_image(
    data: bytes, frame: int, *, size: tuple[int, int] | None, settings: Settings
) -> tuple[bytes, str]:
    """Page ``frame`` of a stored upload as ``(bytes, media type)``.

    ``size`` is the page's stored width and height: a PDF rendered at another
    ``HTRQ_PDF_DPI`` than when it was read is scaled to it, so that the coordinates still
    fit. Raises as :func:`upright_page` does.
    """
    im = upright_page(data, frame, settings)
    if im.mode not in ("L", "RGB"):
        # As the worker reads it: grey stays grey (16-bit scans, bilevel faxes), the rest RGB.
        grey = im.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F", "LA")
        im = im.convert("L" if grey else "RGB")
    if size and all(size) and im.size != size:
        im = im.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if im.width * im.height <= PNG_MAX_PIXELS:
        im.save(buf, "PNG", compress_level=3)
        return buf.getvalue(), "image/png"
    im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue(), "image/jpeg"


def stored_page_image(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    settings: Settings,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    index: int,
) -> tuple[bytes, str]:
    """The succeeded page ``index`` of the tenant's job as ``(bytes, media type)`` at its
    stored size (:func:`page_image`).

    Raises :class:`NotFound` (another tenant's job too), :class:`PageNotSucceeded`, and
    :class:`BlobMissing` when its file is no longer stored.
    """
    check_page_index(job_id, index)
    with sessions() as s:
        job = owned_job(s, tenant_id, job_id)
        page = s.scalars(select(Page).where(Page.job_id == job.id, Page.index == index)).first()
        if page is None:
            raise NotFound(f"no page {index} in job {job_id}")
        if page.status != "succeeded":
            raise PageNotSucceeded(f"page {index} is {page.status}; it has no reading")
        key, frame, size = page.blob_key, page.frame, (page.width or 0, page.height or 0)
    data = storage.get(key)
    # The page has succeeded, so its file rendered within the worker's limits already.
    return page_image(data, frame, size=size, settings=settings)
