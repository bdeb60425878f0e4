"""Fit a line crop to a recognizer's fixed input size.

Training and inference must prepare lines identically, so both call :func:`fit_line`.
No torch here: this runs in data-loader workers and in the service's pipeline.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Line-shaped inputs (width/height at least this) keep the text's aspect ratio; square
#: inputs such as TrOCR's 384x384 are stretched, because that is how those models were trained.
LINE_ASPECT = 4.0


def stretch_contrast(im: Image.Image, low: float = 2.0, high: float = 98.0) -> Image.Image:
    """Map the ``low``..``high`` percentile of grey levels to 0..255.

    Real scans have grey paper and brown ink; rendered training lines do not. Stretching both
    the same way makes the model see similar ranges. The percentiles come from Pillow's
    histogram and the mapping is a lookup table: about 0.1 ms a line, where sorting the
    pixels took milliseconds (this runs for every line the service reads).
    """
    im = im.convert("L")
    seen = np.cumsum(im.histogram())
    if seen[-1] == 0:
        return im
    # The first grey level below which more than ``pct`` percent of the pixels lie.
    targets = np.array([low, high]) / 100.0 * (seen[-1] - 1)
    lo, hi = (min(255, int(x)) for x in np.searchsorted(seen, targets, side="right"))
    if hi - lo < 8:  # a blank crop: leave it alone rather than amplify noise
        return im
    lut = np.clip(np.rint((np.arange(256) - lo) * (255.0 / (hi - lo))), 0, 255)
    return im.point(lut.astype(np.uint8).tolist())


def trim_to_ink(im: Image.Image, ink_below: int = 128, min_row_ink: float = 0.01) -> Image.Image:
    """Crop a contrast-stretched grey line to its ink, keeping a margin of 1/8 of its height.

    Line crops come with whatever margins the segmenter or the scan left; at a 32-pixel model
    input, a crop that is half paper leaves the letters a few pixels tall. A row counts as
    ink when more than ``min_row_ink`` of it is dark, so specks do not hold the margins open.
    Measured with the previous built-in checkpoint (trained without it), greedy: CER
    0.359 -> 0.315 on held-out synthetic lines, 0.908 -> 0.899 on the real 1905 lines.
    """
    box = ink_box(im, ink_below, min_row_ink)
    return im.crop(box) if box else im


def ink_box(
    im: Image.Image, ink_below: int = 128, min_row_ink: float = 0.01
) -> tuple[int, int, int, int] | None:
    """The box :func:`trim_to_ink` crops to, or None where it leaves the line as it is."""
    a = np.asarray(im)
    ink = a < ink_below
    rows = np.flatnonzero(ink.mean(axis=1) > min_row_ink)
    if len(rows) < 2:
        return None  # blank, or a single stroke: nothing to gain
    cols = np.flatnonzero(ink[rows[0] : rows[-1] + 1].any(axis=0))  # within the text's rows
    if len(cols) < 2:
        return None
    pad = max(2, int(rows[-1] - rows[0] + 1) // 8)
    return (
        max(0, int(cols[0]) - pad),
        max(0, int(rows[0]) - pad),
        min(a.shape[1], int(cols[-1]) + 1 + pad),
        min(a.shape[0], int(rows[-1]) + 1 + pad),
    )


#: Set in ``Image.info`` by :func:`prepare_line` (and kept by crops of the result), so that a
#: line the pipeline prepared before splitting is not prepared again when it is fitted.
PREPARED_KEY = "htrq_prepared"


#: Set by :func:`prepare_line`: where the trimmed line starts on the crop it came from (x, y),
#: so that what is found on the line (its words' boxes) can be placed on the crop.
TRIM_KEY = "htrq_trim"


def prepare_line(im: Image.Image) -> Image.Image:
    """Contrast-stretched grey crop trimmed to its ink: what every line goes through first."""
    if im.info.get(PREPARED_KEY):
        return im
    grey = stretch_contrast(im)
    box = ink_box(grey)
    out = grey.crop(box) if box else grey.copy()  # a new image: the caller's is never marked
    out.info[PREPARED_KEY] = True
    out.info[TRIM_KEY] = box[:2] if box else (0, 0)
    return out


def stretch_width(im: Image.Image, factor: float) -> Image.Image:
    """A prepared line ``factor`` times as wide, as tall as before (still marked prepared).

    Reading a line again narrower and wider is a cheap second opinion: a writer's hand is
    more or less compressed than the lines the model learned from, and a letter the model
    misreads at one width it often reads at another.
    """
    if factor == 1.0:
        return im
    out = im.resize((max(1, round(im.width * factor)), im.height), Image.Resampling.BILINEAR)
    out.info[PREPARED_KEY] = True
    return out


def split_aspect(width: int, height: int) -> float | None:
    """How many heights wide a line may be before it is split, for a ``width x height`` input;
    None for an input that is not line-shaped (never split).

    A line model reads lines up to three times its input's aspect squeezed into it, as it
    was trained: real training lines, trimmed, reach 30:1 to 37:1 on a 12:1 input (99th
    percentile 21:1 to 31:1 by collection), squeezed the same way. Wider lines are split with
    overlap, and each seam is a chance to drop or repeat letters: the 20 of the 400 real
    validation lines wider than 24:1 (up to 32:1) read at CER 0.344 split beyond 24:1 and
    0.256 whole (greedy; 0.294 and 0.233 with beam 4; stage 8e), which took the whole set
    from 0.299 to 0.292. A square input (stock TrOCR, 384x384) stretches every line into it,
    as it was trained: such a model reads each line whole.
    """
    aspect = width / height
    return 3 * aspect if aspect >= LINE_ASPECT else None


def fit_line(
    im: Image.Image, *, height: int, width: int, channels: int = 1, pad: int = 255
) -> Image.Image:
    """Return ``im`` as a ``width`` x ``height`` image ready for the processor.

    For line-shaped inputs the crop is scaled to ``height`` keeping its aspect ratio and padded
    on the right with paper; a crop wider than the input is squeezed horizontally (the
    pipeline splits very wide lines before they get here). Square inputs are stretched.
    """
    im = prepare_line(im)  # a no-op when the pipeline prepared the line already
    if width / height >= LINE_ASPECT:
        w, h = im.size
        new_w = max(1, min(width, round(w * height / max(h, 1))))
        im = im.resize((new_w, height), Image.Resampling.BILINEAR)
        if new_w < width:
            canvas = Image.new("L", (width, height), pad)
            canvas.paste(im, (0, 0))
            im = canvas
    else:
        im = im.resize((width, height), Image.Resampling.BILINEAR)
    return im.convert("RGB") if channels == 3 else im
