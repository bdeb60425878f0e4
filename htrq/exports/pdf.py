"""A searchable PDF of a job: each page image with an invisible text layer on its words.

As OCRmyPDF does it: the scan is the visible page, and each word's text is written over its
box in render mode 3 (neither filled nor stroked), scaled to the box's width and sized so
that the font's ascent and descent span the box's height, so that a viewer's search
highlights the word found (not its whole line) and a DMS indexes the text. A space follows
every word but a line's last, squeezed into the gap after it, so that text extraction keeps
the words apart however close the hand wrote them. The text uses an
embedded (subset) DejaVu Sans, which covers the Latin, Greek and Cyrillic scripts of the
archives htrq reads, so that copying or extracting it gives back the characters.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from htrq.exports.formats import PageResult

FONT_FILE = Path(__file__).parent / "fonts" / "DejaVuSans.ttf"
FONT = "htrq-text"
#: Resolution assumed for an image that does not say its own (a scanner's usual).
DEFAULT_DPI = 300.0
#: JPEG quality of the page images: scans stay legible at a tenth of their PNG size.
JPEG_QUALITY = 80


def searchable_pdf(pages: Iterable[tuple[PageResult, Image.Image]], *, title: str = "") -> bytes:
    """One PDF page per (result, page image) pair, in the order given."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(FONT, str(FONT_FILE)))
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pageCompression=1)
    pdf.setTitle(title)
    pdf.setCreator("htrq")
    for result, image in pages:
        dpi = _dpi(image)
        scale = 72.0 / dpi  # image pixels to PDF points
        w, h = image.width * scale, image.height * scale
        pdf.setPageSize((w, h))
        pdf.drawImage(ImageReader(_jpeg(image)), 0, 0, width=w, height=h)
        # Line boxes are in the pixels of the image the result describes; the image drawn
        # may be another rendering of it (a PDF page at another DPI).
        sx = image.width / max(1, result.width) * scale
        sy = image.height / max(1, result.height) * scale
        text = pdf.beginText()
        text.setTextRenderMode(3)
        face: Any = getattr(pdfmetrics.getFont(FONT), "face")  # noqa: B009  (TTFont's, untyped)
        ascent, descent = face.ascent / 1000.0, -face.descent / 1000.0
        for line in result.lines:
            words = [(w["text"], w["box"]) for w in line.words if w["text"].strip()]
            if not words and line.text.strip():
                words = [(line.text, list(line.bbox))]
            for j, (word, (x0, y0, x1, y1)) in enumerate(words):
                # A PDF reader's box for a word is the font's ascent to descent at its size.
                size = max(1.0, (y1 - y0) * sy / (ascent + descent))
                natural = pdfmetrics.stringWidth(word, FONT, size)
                text.setFont(FONT, size)
                text.setHorizScale(100.0 * max(1, x1 - x0) * sx / natural if natural else 100.0)
                text.setTextOrigin(x0 * sx, h - y1 * sy + descent * size)
                last = j == len(words) - 1
                text.textOut(word if last else word + " ")
        pdf.drawText(text)
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def _dpi(image: Image.Image) -> float:
    dpi = image.info.get("dpi")
    try:
        value = float(dpi[0]) if dpi else 0.0
    except (TypeError, ValueError, IndexError):
        value = 0.0
    return value if 50 <= value <= 2400 else DEFAULT_DPI


def _jpeg(image: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    image.convert(mode).save(buf, "JPEG", quality=JPEG_QUALITY)
    buf.seek(0)
    return buf
