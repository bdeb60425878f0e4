"""Find text lines on a page. The :class:`Segmenter` seam lets methods be swapped by config.

``mode=page`` uses :func:`make_segmenter` (``classical`` by default: OpenCV only, see
``worker/segmentation/classical.py``); ``mode=line`` uses :class:`WholeImageSegmenter`.
:func:`split_wide` and :func:`join_pieces` keep long lines from being squashed into the
recognizer's fixed input width.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Segmenters :func:`make_segmenter` knows; ``kraken`` needs the optional kraken package.
SEGMENTERS = ("classical", "projection", "kraken", "whole")


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


def make_segmenter(name: str = "classical") -> Segmenter:
    """The segmenter called ``name`` (one of :data:`SEGMENTERS`)."""
    if name == "classical":
        from worker.segmentation.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    if name == "projection":
        from worker.segmentation.projection import ProjectionSegmenter

        return ProjectionSegmenter()
    if name == "kraken":
        from worker.segmentation.kraken_blla import KrakenSegmenter

        return KrakenSegmenter()
    if name == "whole":
        return WholeImageSegmenter()
    raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")


def to_source_frame(lines: list[LineBox], angle: float, size: tuple[int, int]) -> list[LineBox]:
    """Map lines found on a page deskewed by ``angle`` back onto the uploaded image.

    ``angle`` and ``size`` are the normalised page's ``info[SKEW_INFO_KEY]`` and size (the
    rotation keeps the size). Boxes are recomputed from the mapped polygons, so they stay tight.
    """
    if not angle:
        return list(lines)
    from worker.preprocess import rotate_points

    w, h = size
    out = []
    for line in lines:
        x0, y0, x1, y1 = line.bbox
        outline = line.polygon or [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        poly = [
            (min(w, max(0, x)), min(h, max(0, y))) for x, y in rotate_points(outline, angle, size)
        ]
        base = rotate_points(line.baseline, angle, size) if line.baseline else None
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        bbox = (min(xs), min(ys), max(xs), max(ys))
        out.append(LineBox(bbox=bbox, polygon=poly if line.polygon else None, baseline=base))
    return out


def from_source_frame(lines: list[LineBox], angle: float, size: tuple[int, int]) -> list[LineBox]:
    """Map lines stored on the uploaded image onto the page deskewed by ``angle``: the
    inverse of :func:`to_source_frame`, to cut a stored line as the pipeline cut it.

    Every mapped line gets an outline: a box without one becomes its four corners turned,
    so that :func:`crop_lines` masks what the turned box's corners would add.
    """
    if not angle:
        return list(lines)
    from worker.preprocess import rotate_points

    w, h = size
    out = []
    for line in lines:
        x0, y0, x1, y1 = line.bbox
        outline = line.polygon or [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        # rotate_points maps the page turned by ``angle`` back; by ``-angle`` it maps forward.
        poly = [
            (min(w, max(0, x)), min(h, max(0, y))) for x, y in rotate_points(outline, -angle, size)
        ]
        base = rotate_points(line.baseline, -angle, size) if line.baseline else None
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        out.append(LineBox(bbox=(min(xs), min(ys), max(xs), max(ys)), polygon=poly, baseline=base))
    return out


def crop_lines(
    page: Image.Image, boxes: list[LineBox], *, margin: int = 4, mask: bool = True
) -> list[Image.Image]:
    """Cut each box out of the page with a small margin, clipped to the page.

    With ``mask`` and a polygon, pixels outside the (margin-dilated) polygon are set to the
    paper's tone, so ascenders and descenders of the neighbouring lines do not reach the
    recognizer.
    """
    w, h = page.size
    crops = []
    paper = _paper_tone(page) if mask else 0
    for b in boxes:
        x0, y0, x1, y1 = b.bbox
        box = (max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin))
        crop = page.crop(box)
        if mask and b.polygon and len(b.polygon) >= 3 and crop.width and crop.height:
            keep = Image.new("L", crop.size, 0)
            pts = [(x - box[0], y - box[1]) for x, y in b.polygon]
            ImageDraw.Draw(keep).polygon(pts, fill=255, outline=255)
            if margin:
                keep = keep.filter(ImageFilter.MaxFilter(2 * margin + 1))
            background = Image.new(crop.mode, crop.size, _fill_for(crop.mode, paper))
            crop = Image.composite(crop, background, keep)
        crops.append(crop)
    return crops


def split_wide(
    crop: Image.Image, *, max_aspect: float = 12.0, overlap: float = 0.25
) -> list[Image.Image]:
    """Split a line wider than ``max_aspect`` x its height into overlapping pieces.

    Each piece is at most ``max_aspect * height`` wide and shares about ``overlap`` of its
    width with the next, so every word is whole in at least one piece. Cuts are moved to the
    emptiest column nearby (a word gap if there is one) so few letters are cut in half.
    """
    w, h = crop.size
    piece = max(1, int(max_aspect * h))
    if w <= piece:
        return [crop]
    ink = _column_ink(crop)
    shared = int(piece * overlap)
    window = max(1, shared // 3)  # how far a cut may move to find a gap

    def gap_near(x: int) -> int:
        lo = max(0, x - window)
        # Lowest ink in [lo, x]; on ties the column nearest x, so pieces stay wide.
        return x - int(np.argmin(ink[lo : x + 1][::-1]))

    pieces, start = [], 0
    while w - start > piece:
        end = gap_near(start + piece)
        pieces.append(crop.crop((start, 0, end, h)))
        start = gap_near(end - shared)
    pieces.append(crop.crop((start, 0, w, h)))
    return pieces


def join_pieces(texts: list[str], *, min_overlap: int = 3) -> str:
    """Re-join the texts of :func:`split_wide`'s pieces, merging their overlap.

    The end of one text and the start of the next read the same stretch of ink; the longest
    common run of characters between them (at least ``min_overlap`` long, near the seam) is
    kept once. Without such a run the texts are joined with a space.
    """
    out = ""
    for text in texts:
        text = text.strip()
        if not out:
            out = text
            continue
        if not text:
            continue
        tail, head = out[-len(text) - 10 :], text[: len(out) + 10]
        m = difflib.SequenceMatcher(None, tail, head, autojunk=False).find_longest_match(
            0, len(tail), 0, len(head)
        )
        # The shared run must reach close to the end of the tail and the start of the head.
        near_seam = (len(tail) - (m.a + m.size)) <= 3 + m.size // 2 and m.b <= 3 + m.size // 2
        if m.size >= min_overlap and near_seam:
            out = out[: len(out) - len(tail) + m.a] + text[m.b :]
        else:
            out = f"{out} {text}"
    return out


def split_all(
    crops: Sequence[Image.Image], *, max_aspect: float | None
) -> tuple[list[Image.Image], list[int]]:
    """:func:`split_wide` over many crops: every piece in order, and how many each crop gave.

    ``max_aspect`` None splits nothing (every crop is one piece).
    """
    if max_aspect is None:
        return list(crops), [1] * len(crops)
    pieces = [split_wide(c, max_aspect=max_aspect) for c in crops]
    return [p for ps in pieces for p in ps], [len(ps) for ps in pieces]


def join_all(
    results: Sequence[tuple[str, float]], counts: Sequence[int]
) -> list[tuple[str, float]]:
    """Undo :func:`split_all` on the recognizer's ``(text, confidence)`` per piece.

    A line's text is :func:`join_pieces` of its pieces; its confidence the mean of theirs,
    weighted by their text length (as a page's is over its lines).
    """
    out, i = [], 0
    for n in counts:
        part = results[i : i + n]
        i += n
        weights = [max(1, len(t)) for t, _ in part]
        conf = sum(c * w for (_, c), w in zip(part, weights, strict=True)) / max(1, sum(weights))
        out.append((join_pieces([t for t, _ in part]), conf))
    return out


def _column_ink(crop: Image.Image) -> np.ndarray:
    arr = np.asarray(crop.convert("L"), np.float32)
    return (255.0 - arr).sum(axis=0)


def _paper_tone(page: Image.Image) -> int:
    gray = page.convert("L") if page.mode != "L" else page
    small = gray.resize((max(1, gray.width // 8), max(1, gray.height // 8)))
    return int(np.percentile(np.asarray(small), 90))


def _fill_for(mode: str, tone: int) -> tuple[int, ...] | int:
    bands = len(mode) if mode in ("RGB", "RGBA") else 1
    return (tone,) * bands if bands > 1 else tone
