"""Find text lines on a page. The :class:`Segmenter` seam lets methods be swapped by config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class LineBox:
    bbox: tuple[int, int, int, int]  #: x0, y0, x1, y1 in page pixels
    polygon: list[tuple[int, int]] | None = field(default=None)
    baseline: list[tuple[int, int]] | None = field(default=None)


class Segmenter(Protocol):
    def __call__(self, page: Image.Image) -> list[LineBox]:
        """Return the page's text lines in reading order."""
        ...


class WholeImageSegmenter:
    """Treat the whole image as one line (``mode=line``)."""

    def __call__(self, page: Image.Image) -> list[LineBox]:
        w, h = page.size
        return [LineBox(bbox=(0, 0, w, h))]


def crop_lines(page: Image.Image, boxes: list[LineBox], *, margin: int = 4) -> list[Image.Image]:
    """Cut each box out of the page with a small margin, clipped to the page."""
    w, h = page.size
    crops = []
    for b in boxes:
        x0, y0, x1, y1 = b.bbox
        crops.append(
            page.crop((max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)))
        )
    return crops
