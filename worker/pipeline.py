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
from worker.lineimage import prepare_line
from worker.preprocess import BLANK_INFO_KEY, SKEW_INFO_KEY, normalise_page
from worker.segment import (
    LineBox,
    Segmenter,
    WholeImageSegmenter,
    crop_lines,
    join_all,
    make_segmenter,
    split_all,
    to_source_frame,
)

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
    polygon: list[tuple[int, int]] | None = None
    baseline: list[tuple[int, int]] | None = None


@dataclass(frozen=True)
class PageOutput:
    text: str
    confidence: float | None  #: None when the page has no lines
    lines: list[LineOutput] = field(default_factory=list)
    size: tuple[int, int] | None = None  #: width, height of the page image the boxes refer to


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
        max_aspect: float = 12.0,
    ) -> None:
        self.recognize = recognize
        #: Used for ``mode=page``; the next issue swaps in a real page segmenter here.
        self.segmenter: Segmenter = segmenter or make_segmenter()
        #: Used for ``mode=line``: the upload is a single line.
        self.line_segmenter: Segmenter = WholeImageSegmenter()
        self.max_pixels = max_pixels
        self.pdf_dpi = pdf_dpi
        self.line_margin = line_margin
        #: Crops wider than this many heights are split with overlap (the model's input shape).
        self.max_aspect = max_aspect

    def __call__(self, pages: Sequence[PageInput]) -> dict[Hashable, PageOutput | PageError]:
        """Return each page's output, or the :class:`PageError` that stopped it.

        A recognizer failure is not a page's fault and propagates to the caller.
        """
        outcomes: dict[Hashable, PageOutput | PageError] = {}
        spans: list[tuple[Hashable, list[LineBox], list[int], int, tuple[int, int]]] = []
        pieces: list[Image.Image] = []
        for page in pages:
            try:
                boxes, page_pieces, counts, size = self._cut(page)
            except PageError as exc:
                outcomes[page.key] = exc
                continue
            spans.append((page.key, boxes, counts, len(pieces), size))
            pieces.extend(page_pieces)

        results = list(self.recognize(pieces)) if pieces else []
        if len(results) != len(pieces):
            raise RuntimeError(
                f"recognizer returned {len(results)} results for {len(pieces)} pieces"
            )
        for key, boxes, counts, start, size in spans:
            flat = [(r.text, float(r.confidence)) for r in results[start : start + sum(counts)]]
            lines = [
                LineOutput(
                    text=text,
                    confidence=min(1.0, max(0.0, conf)),
                    bbox=b.bbox,
                    polygon=b.polygon,
                    baseline=b.baseline,
                )
                for (text, conf), b in zip(join_all(flat, counts), boxes, strict=True)
            ]
            outcomes[key] = PageOutput(
                text="\n".join(ln.text for ln in lines),
                confidence=page_confidence(lines),
                lines=lines,
                size=size,
            )
        return outcomes

    def _cut(
        self, page: PageInput
    ) -> tuple[list[LineBox], list[Image.Image], list[int], tuple[int, int]]:
        """Lines (on the uploaded image), recognizer pieces, pieces per line, page size."""
        try:
            raw = render_page(page.data, page.frame, dpi=self.pdf_dpi, max_pixels=self.max_pixels)
            im = normalise_page(raw, max_pixels=self.max_pixels, deskew=page.mode != "line")
            segmenter = self.line_segmenter if page.mode == "line" else self.segmenter
            # A blank page or line has no text to find; reading it would only invent some.
            boxes = [] if im.info.get(BLANK_INFO_KEY) else segmenter(im)
            crops = crop_lines(im, boxes, margin=self.line_margin)
        except PageError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            # Pillow decodes lazily: a truncated or corrupt file can fail at any step here.
            raise PageError("invalid_image", f"the image could not be decoded: {exc}") from exc
        # Trimmed before splitting, so that a line's width is measured against its ink height.
        pieces, counts = split_all([prepare_line(c) for c in crops], max_aspect=self.max_aspect)
        # Crops come from the deskewed page; what is stored refers to the uploaded image.
        lines = to_source_frame(boxes, im.info.get(SKEW_INFO_KEY, 0.0), im.size)
        return lines, pieces, counts, im.size
