"""Baseline for comparison: global horizontal projection profile (one band per text line).

The textbook classical method: rows of a deskewed page are summed, the profile is smoothed
over a fraction of the line pitch, and each run of rows between two valleys is a line whose
box is the extent of its ink. It cannot separate a marginal note from the line beside it or
follow a baseline that wanders; :class:`~worker.segmentation.classical.ClassicalSegmenter`
does both. Kept for ``bench/segmentation.py --methods projection``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from worker.segmentation.base import LineBox
from worker.segmentation.classical import prepare


@dataclass(frozen=True)
class ProjectionSegmenter:
    #: Longer side of the working copy, px.
    work_size: int = 1600
    #: A row belongs to a line while its smoothed ink is above this share of the median peak.
    level: float = 0.2

    def __call__(self, page: Image.Image) -> list[LineBox]:
        prepared = prepare(page, self.work_size)
        if prepared is None:
            return []
        ink, pitch, f = prepared
        rows = ink.sum(axis=1).astype(np.float64)
        k = max(1, int(pitch / 4)) | 1
        smooth = np.convolve(rows, np.ones(k) / k, mode="same")
        peaks = smooth[smooth > 0]
        if not len(peaks):
            return []
        on = smooth > self.level * float(np.percentile(peaks, 90))
        boxes = []
        y = 0
        while y < len(on):
            if not on[y]:
                y += 1
                continue
            y0 = y
            while y < len(on) and on[y]:
                y += 1
            band = ink[y0:y]
            cols = np.flatnonzero(band.any(axis=0))
            if len(cols) and y - y0 >= 0.2 * pitch and cols[-1] - cols[0] >= pitch:
                boxes.append(
                    LineBox(
                        bbox=(
                            round(cols[0] / f),
                            round(y0 / f),
                            round((cols[-1] + 1) / f),
                            round(y / f),
                        )
                    )
                )
        return boxes
