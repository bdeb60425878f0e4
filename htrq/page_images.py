"""A stored page as an image for people to look at (the review page), in the frame its line
coordinates refer to.

The worker reads a page after :func:`htrq.inputs.render_page` and EXIF orientation
(``worker.preprocess.normalise_page``), and stores line coordinates in that upright image;
this renders the same way, keeping the scan's colours, so the outlines fall on their lines.
PDF pages are rendered by this process's :func:`htrq.rendering.pdf_renderer`, never in the
calling (request) thread.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from htrq.rendering import pdf_renderer
from htrq.settings import Settings

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
    im = pdf_renderer(settings).render(
        data,
        frame,
        dpi=settings.pdf_dpi,
        max_pixels=settings.max_pixels,
        max_aspect=settings.max_aspect,
    )
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
