"""Turn a decoded page into the normalised image the segmenter and recognizer expect.

Steps, in order: pixel bound (from the header, before any pixel is decoded), EXIF orientation,
8-bit grayscale, contrast stretch, and deskew of small rotations. Line boxes found later are in
the coordinates of this normalised image; :func:`rotate_points` maps them back onto the
uploaded image when a caller needs that.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageOps

from htrq.errors import PageError
from htrq.inputs import check_pixels

#: Largest rotation, in degrees, that deskew looks for; beyond this a page is left alone
#: (a sideways scan is an EXIF or upload problem, not skew).
MAX_SKEW_DEGREES = 5.0

#: Rotations smaller than this are not worth a resample (it would blur the strokes).
MIN_SKEW_DEGREES = 0.2

#: Images at least this many times wider than tall are single lines, never deskewed.
LINE_SHAPED_ASPECT = 3.0

#: Skew is estimated on a copy this wide: enough for 0.1 degree steps, and fast.
_SKEW_WORK_WIDTH = 1000

#: A page whose tones all lie within this range (of 255) is blank: nothing to read.
BLANK_TONE_RANGE = 8

#: ``Image.info`` key under which the applied rotation (degrees, counter-clockwise) is kept.
SKEW_INFO_KEY = "htrq_skew_degrees"
#: ``Image.info`` key set (True) on a blank page: one uniform tone, nothing to read.
BLANK_INFO_KEY = "htrq_blank"


def normalise_page(im: Image.Image, *, max_pixels: int, deskew: bool = True) -> Image.Image:
    """Return ``im`` upright, 8-bit grayscale, contrast-stretched and (optionally) deskewed.

    Raises :class:`PageError` ``too_large`` before decoding any pixel when ``im`` is still lazy
    (as :func:`PIL.Image.open` returns it), and ``empty_image`` for a page without pixels. A
    blank page (one uniform tone) comes back as it is, marked ``info[BLANK_INFO_KEY]``: it is
    a page with no text, such as the back of a sheet, not an error. The rotation applied is
    kept in ``result.info[SKEW_INFO_KEY]``.
    """
    w, h = im.size
    if w <= 0 or h <= 0:
        raise PageError("empty_image", "the image has no pixels")
    check_pixels((w, h), max_pixels)
    im = ImageOps.exif_transpose(im)
    gray = im.convert("L") if im.mode != "L" else im.copy()
    lo, hi = gray.getextrema()
    if hi - lo < BLANK_TONE_RANGE:
        gray.info.update({BLANK_INFO_KEY: True, SKEW_INFO_KEY: 0.0})
        return gray
    # A 1% tail on each side keeps specks and bleed-through from setting the range.
    gray = ImageOps.autocontrast(gray, cutoff=(1, 1))
    # A line-shaped image (mode=line) is left as it is: rotating it in place would clip the
    # ends of its text, and the recognizer copes with a slight slope.
    line_shaped = gray.width >= LINE_SHAPED_ASPECT * gray.height
    angle = estimate_skew(gray) if deskew and not line_shaped else 0.0
    if abs(angle) >= MIN_SKEW_DEGREES:
        gray = rotate_page(gray, angle)
    else:
        angle = 0.0
    gray.info[SKEW_INFO_KEY] = angle
    return gray


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """Binary ink mask (uint8 0/1) of a grayscale page, robust to uneven lighting.

    The page is divided by a smooth background estimate (a large median of a downscaled copy)
    before Otsu, so a shadowed corner does not turn black.
    """
    h, w = gray.shape
    small_scale = min(1.0, 400 / max(h, w))
    small = cv2.resize(gray, None, fx=small_scale, fy=small_scale, interpolation=cv2.INTER_AREA)
    bg_small = cv2.medianBlur(small, 2 * max(3, round(min(small.shape) / 20)) + 1)
    bg = cv2.resize(bg_small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    flat = np.clip(gray.astype(np.float32) / np.maximum(bg, 1.0) * 255.0, 0, 255).astype(np.uint8)
    _, binary = cv2.threshold(flat, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    # Otsu on a blank page splits paper noise in two: demand real contrast for ink.
    if not binary.any() or float(np.mean(flat[binary == 1])) > 200:
        return np.zeros_like(binary)
    return binary


def estimate_skew(gray_page: Image.Image) -> float:
    """Angle (degrees, counter-clockwise) that makes the text lines horizontal.

    Projection-profile search: the rotation whose row sums of ink are most peaked (largest
    variance) aligns the lines with the rows. Coarse 0.5 degree steps, then 0.1 around the best.
    """
    arr = np.asarray(gray_page)
    scale = min(1.0, _SKEW_WORK_WIDTH / arr.shape[1])
    small = cv2.resize(arr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ink = ink_mask(small).astype(np.float32)
    if ink.sum() < 50:  # a blank page has no skew to find
        return 0.0

    def score(angle: float) -> float:
        rows = _rotate_array(ink, angle, border=0).sum(axis=1)
        return float(np.var(rows))

    coarse = np.arange(-MAX_SKEW_DEGREES, MAX_SKEW_DEGREES + 1e-6, 0.5)
    best = max(coarse, key=score)
    fine = np.arange(best - 0.4, best + 0.41, 0.1)
    return round(float(max(fine, key=score)), 2)


def rotate_page(gray: Image.Image, angle: float) -> Image.Image:
    """Rotate about the centre keeping the size, filling with the paper's tone."""
    arr = np.asarray(gray)
    paper = int(np.percentile(arr, 90))
    out = Image.fromarray(_rotate_array(arr, angle, border=paper))
    return out


def rotate_points(
    points: list[tuple[int, int]], angle: float, size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Map points of a page rotated by ``angle`` (see :func:`rotate_page`) back to the original.

    Rotation is about the centre with the size kept, so the inverse is the opposite rotation
    about the same centre.
    """
    if not angle:
        return list(points)
    cx, cy = (size[0] - 1) / 2, (size[1] - 1) / 2
    # Image y points down: a counter-clockwise rotation on screen is clockwise in math axes.
    t = math.radians(-angle)
    c, s = math.cos(t), math.sin(t)
    out = []
    for x, y in points:
        dx, dy = x - cx, y - cy
        out.append((round(cx + c * dx + s * dy), round(cy - s * dx + c * dy)))
    return out


def _rotate_array(arr: np.ndarray, angle: float, *, border: int) -> np.ndarray:
    h, w = arr.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(
        arr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )
