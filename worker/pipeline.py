"""Page images in, page results out. Pure: no Celery, no database, no storage.

All line crops of all pages in a group go to the recognizer in one call, which sorts them by
width and batches them, so that a group of short pages fills the batches as well as a long one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from htrq.errors import PageError
from htrq.inputs import render_page
from worker.preprocess import normalise_page
from worker.segment import Segmenter, WholeImageSegmenter, crop_lines

log = logging.getLogger(__name__)


class Recognized(Protocol):
    text: str
    confidence: float


#: The recognizer seen from here: crops in, one result per crop out, in order.
Recognize = Callable[[Sequence[Image.Image]], Sequence[Recognized]]


@dataclass(frozen=True)
class PageInput:
    key: Hashable  #: the caller's handle for the page (a page id), returned untouched
    data: bytes  #: the stored upload
    frame: int = 0  #: which page of the upload
    mode: str = "page"  #: ``page``: segment into lines; ``line``: the image is one line


@dataclass(frozen=True)
class LineOutput:
    text: str
    confidence: float
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class PageOutput:
    text: str
    confidence: float | None  #: None when the page has no lines
    lines: list[LineOutput] = field(default_factory=list)


def page_confidence(lines: Sequence[LineOutput]) -> float | None:
    """Character-weighted mean of line confidences.

    Each line weighs at least 1 so that an empty line still counts and an all-empty page does
    not divide by zero.
    """
    if not lines:
        return None
    weights = [max(1, len(ln.text)) for ln in lines]
    return sum(w * ln.confidence for w, ln in zip(weights, lines, strict=True)) / sum(weights)


class Pipeline:
    """Decode, normalise, segment and crop each page, then recognise every crop together."""

    def __init__(
        self,
        *,
        recognize: Recognize,
        segmenter: Segmenter | None = None,
        max_pixels: int = 60_000_000,
        pdf_dpi: int = 300,
        line_margin: int = 4,
    ) -> None:
        self.recognize = recognize
        #: Used for ``mode=page``; the next issue swaps in a real page segmenter here.
        self.segmenter: Segmenter = segmenter or WholeImageSegmenter()
        #: Used for ``mode=line``: the upload is a single line.
        self.line_segmenter: Segmenter = WholeImageSegmenter()
        self.max_pixels = max_pixels
        self.pdf_dpi = pdf_dpi
        self.line_margin = line_margin

    def __call__(self, pages: Sequence[PageInput]) -> dict[Hashable, PageOutput | PageError]:
        """Return each page's output, or the :class:`PageError` that stopped it.

        A recognizer failure is not a page's fault and propagates to the caller.
        """
        outcomes: dict[Hashable, PageOutput | PageError] = {}
        spans: list[tuple[Hashable, list[tuple[int, int, int, int]], int]] = []
        crops: list[Image.Image] = []
        for page in pages:
            try:
                boxes, page_crops = self._cut(page)
            except PageError as exc:
                outcomes[page.key] = exc
                continue
            spans.append((page.key, boxes, len(crops)))
            crops.extend(page_crops)

        results = list(self.recognize(crops)) if crops else []
        if len(results) != len(crops):
            raise RuntimeError(f"recognizer returned {len(results)} results for {len(crops)} lines")
        for key, boxes, start in spans:
            lines = [
                LineOutput(text=r.text, confidence=min(1.0, max(0.0, float(r.confidence))), bbox=b)
                for r, b in zip(results[start : start + len(boxes)], boxes, strict=True)
            ]
            outcomes[key] = PageOutput(
                text="\n".join(ln.text for ln in lines),
                confidence=page_confidence(lines),
                lines=lines,
            )
        return outcomes

    def _cut(self, page: PageInput) -> tuple[list[tuple[int, int, int, int]], list[Image.Image]]:
        try:
            raw = render_page(page.data, page.frame, dpi=self.pdf_dpi, max_pixels=self.max_pixels)
            im = normalise_page(raw, max_pixels=self.max_pixels)
            segmenter = self.line_segmenter if page.mode == "line" else self.segmenter
            boxes = segmenter(im)
            crops = crop_lines(im, boxes, margin=self.line_margin)
        except PageError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            # Pillow decodes lazily: a truncated or corrupt file can fail at any step here.
            raise PageError("invalid_image", f"the image could not be decoded: {exc}") from exc
        return [b.bbox for b in boxes], crops
