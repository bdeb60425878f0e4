"""The segmenter interface: a page image in, its text lines (:class:`LineBox`) out.

Every segmenter (``classical``, ``projection``, ``kraken``, ``whole``) takes and returns these
types; :func:`worker.segmentation.make_segmenter` picks one by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class LineBox:
    bbox: tuple[int, int, int, int]  #: x0, y0, x1, y1 in page pixels
    polygon: list[tuple[int, int]] | None = field(default=None)  #: outline, page pixels
    baseline: list[tuple[int, int]] | None = field(default=None)  #: polyline, page pixels


class Segmenter(Protocol):
    def __call__(self, page: Image.Image) -> list[LineBox]:
        """Return the page's text lines in reading order."""
        ...


class WholeImageSegmenter:
    """Treat the whole image as one line (``mode=line``)."""

    def __call__(self, page: Image.Image) -> list[LineBox]:
        w, h = page.size
        return [LineBox(bbox=(0, 0, w, h))]
