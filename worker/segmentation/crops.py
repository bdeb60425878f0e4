"""Cutting lines out of a page, and mapping them between the deskewed page and the upload.

The pipeline finds lines on the normalised (deskewed) page and cuts them there
(:func:`crop_lines`); what is stored refers to the uploaded image (:func:`to_source_frame`).
To cut a stored line again as it was cut, it is mapped forward (:func:`from_source_frame`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from worker.segmentation.base import LineBox
from worker.segmentation.preprocess import rotate_points


def to_source_frame(lines: list[LineBox], angle: float, size: tuple[int, int]) -> list[LineBox]:
    """Map lines found on a page deskewed by ``angle`` back onto the uploaded image.

    ``angle`` and ``size`` are the normalised page's ``info[SKEW_INFO_KEY]`` and size (the
    rotation keeps the size). Boxes are recomputed from the mapped polygons, so they stay tight.
    """
    return _turned(lines, angle, size, outline_all=False)


def from_source_frame(lines: list[LineBox], angle: float, size: tuple[int, int]) -> list[LineBox]:
    """Map lines stored on the uploaded image onto the page deskewed by ``angle``: the
    inverse of :func:`to_source_frame`, to cut a stored line as the pipeline cut it.

    Every mapped line gets an outline: a box without one becomes its four corners turned,
    so that :func:`crop_lines` masks what the turned box's corners would add.
    """
    # rotate_points maps the page turned by ``angle`` back; by ``-angle`` it maps forward.
    return _turned(lines, -angle, size, outline_all=True)


def _turned(
    lines: list[LineBox], angle: float, size: tuple[int, int], *, outline_all: bool
) -> list[LineBox]:
    """``lines`` turned by :func:`rotate_points` with ``angle``, clipped to the page; a line
    without an outline keeps none unless ``outline_all`` (its box's corners, turned)."""
    if not angle:
        return list(lines)
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
        keep = poly if outline_all or line.polygon else None
        out.append(LineBox(bbox=bbox, polygon=keep, baseline=base))
    return out


def crop_box(b: LineBox, size: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """The part of a ``size`` page that :func:`crop_lines` cuts for ``b``."""
    w, h = size
    x0, y0, x1, y1 = b.bbox
    return max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)


def box_to_source(
    box: tuple[int, int, int, int],
    origin: tuple[int, int],
    angle: float,
    size: tuple[int, int],
    clip: tuple[int, int, int, int],
) -> list[int]:
    """A box on a line's crop (cut at ``origin`` of the page deskewed by ``angle``) on the
    uploaded image: its corners moved and turned as :func:`to_source_frame` turns the line,
    the box around them clipped to ``clip`` (the line's own box there)."""
    ox, oy = origin
    x0, y0, x1, y1 = box[0] + ox, box[1] + oy, box[2] + ox, box[3] + oy
    pts = rotate_points([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], angle, size)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx0, cy0, cx1, cy1 = clip
    left, right = min(cx1, max(cx0, min(xs))), min(cx1, max(cx0, max(xs)))
    top, bottom = min(cy1, max(cy0, min(ys))), min(cy1, max(cy0, max(ys)))
    return [int(left), int(top), int(right), int(bottom)]  # plain ints: stored as JSON


def clip_to_outline(box: list[int], outline: list[tuple[int, int]] | None) -> list[int]:
    """``box`` with its top and bottom clipped to where ``outline`` (a line's polygon) lies
    over the box's columns; unchanged without an outline or where the clip would empty it."""
    if not outline or len(outline) < 3:
        return box
    x0, y0, x1, y1 = box
    ys = [y for x, y in outline if x0 <= x <= x1]
    for (ax, ay), (bx, by) in zip(outline, [*outline[1:], outline[0]], strict=True):
        for x in (x0, x1):  # where the outline's edges cross the box's sides
            if ax != bx and min(ax, bx) <= x <= max(ax, bx):
                ys.append(round(ay + (by - ay) * (x - ax) / (bx - ax)))
    if not ys:
        return box
    top, bottom = max(y0, min(ys)), min(y1, max(ys))
    return [x0, top, x1, bottom] if top < bottom else box


def crop_lines(
    page: Image.Image, boxes: list[LineBox], *, margin: int = 4, mask: bool = True
) -> list[Image.Image]:
    """Cut each box out of the page with a small margin, clipped to the page.

    With ``mask`` and a polygon, pixels outside the (margin-dilated) polygon are set to the
    paper's tone, so ascenders and descenders of the neighbouring lines do not reach the
    recognizer.
    """
    crops = []
    paper = _paper_tone(page) if mask else 0
    for b in boxes:
        box = crop_box(b, page.size, margin)
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


def _paper_tone(page: Image.Image) -> int:
    gray = page.convert("L") if page.mode != "L" else page
    small = gray.resize((max(1, gray.width // 8), max(1, gray.height // 8)))
    return int(np.percentile(np.asarray(small), 90))


def _fill_for(mode: str, tone: int) -> tuple[int, ...] | int:
    bands = len(mode) if mode in ("RGB", "RGBA") else 1
    return (tone,) * bands if bands > 1 else tone
