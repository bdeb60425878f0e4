"""Classical line segmentation with OpenCV: ink mask, smeared fragments chained into lines.

Method (in the spirit of OCRopus' and kraken's legacy segmenter, with OpenCV primitives):

1. work on a copy whose longer side is ``work_size`` px; binarise after flattening the
   background; erase ruled lines and specks (:func:`prepare`);
2. measure the letter height (connected components) and the line pitch (autocorrelation of
   the row profile); every later length is a multiple of the pitch;
3. smear the ink with a wide, flat Gaussian and keep the ridge of each line, so letters and
   close words fuse into *fragments* while neighbouring lines stay apart; a fragment that
   still spans two lines (a long descender touching the next line) is cut at its neck;
4. chain fragments left to right into lines, each to the chain whose end is near and level
   with it (a line may wander, but cannot jump to the next line);
5. give every ink pixel to its nearest line (distance transform with labels), so ascenders,
   descenders and touching strokes go to the line they are closest to;
6. per line: bounding box, an upper/lower envelope polygon and a straight baseline.

Coordinates are returned in the input page's pixels, lines in reading order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from worker.segmentation.base import LineBox
from worker.segmentation.preprocess import LINE_SHAPED_ASPECT, ink_mask

Points = list[tuple[int, int]]


@dataclass(frozen=True)
class ClassicalSegmenter:
    """Line segmenter for handwritten pages; a :class:`worker.segmentation.base.Segmenter`.

    Lengths below are in units of the page's line pitch (distance between baselines, measured
    per page), so one setting serves small and large writing alike.
    """

    #: Longer side of the working copy, px: large enough for small writing, small for speed.
    work_size: int = 1600
    #: Horizontal smear (Gaussian sigma): fuses letters and close words into fragments.
    smear_x: float = 0.3
    #: Vertical smear: small, so neighbouring lines do not fuse.
    smear_y: float = 0.06
    #: A smeared pixel belongs to a fragment when its ink density is at least this fraction
    #: of the median density over ink pixels.
    core_threshold: float = 0.5
    #: A fragment pixel must reach this fraction of the highest density within one pitch
    #: above or below it (the line's middle), which splits lines that touch.
    ridge: float = 0.5
    #: Fragments side by side are one line when their gap is under this...
    join_gap: float = 2.0
    #: ...and their middles are within this vertically.
    join_dy: float = 0.35
    #: Lines narrower than this are stray marks (ticks, dots, stains), not text...
    min_line_width: float = 1.0
    #: ...unless they are at least this wide and alone on their row, clear of every wider
    #: line: the short lines of forms and letters ("9:11", "44", "p. 16"). A quote mark or a
    #: loose loop sits within a line's band and stays part of that line.
    min_short_line_width: float = 0.5
    #: Ink farther than this from any fragment is left out (stains, far-off marks).
    max_ink_distance: float = 0.5

    def __call__(self, page: Image.Image) -> list[LineBox]:
        w, h = page.size
        prepared = prepare(page, self.work_size)
        lines: list[LineBox] = []
        if prepared is not None:
            ink, pitch, f = prepared
            fragments = self._fragments(ink, pitch)
            core_ids, n_lines = self._join(fragments, pitch)
            found = _assign_ink(ink, core_ids, n_lines, max_distance=self.max_ink_distance * pitch)
            lines = [_scale_line(line, 1 / f, (w, h)) for line in reading_order(found)]
        if not lines and w >= LINE_SHAPED_ASPECT * h:
            # A line-shaped image without a line found (one short word, tiny writing): an
            # upload of a single line in mode=page; read it whole, as mode=line would.
            return [LineBox(bbox=(0, 0, w, h))]
        return lines

    def _fragments(self, ink: np.ndarray, pitch: float) -> tuple[np.ndarray, np.ndarray]:
        """Label image of smeared ink blobs (words or parts of words) and their stats."""
        smeared = cv2.GaussianBlur(
            ink.astype(np.float32), (0, 0), sigmaX=self.smear_x * pitch, sigmaY=self.smear_y * pitch
        )
        # Relative to the density typical of ink, so pen width and scan resolution cancel out.
        level = float(np.median(smeared[ink > 0]))
        # Ridge test: keep only the upper part of each vertical density peak, so lines whose
        # ascenders and descenders touch still give separate fragments.
        local_max = cv2.dilate(smeared, np.ones((max(3, int(pitch)) | 1, 1), np.uint8))
        mask = (smeared >= self.core_threshold * level) & (smeared >= self.ridge * local_max)
        mask = mask.astype(np.uint8)
        for _ in range(_MAX_SPLIT_ROUNDS):
            _, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
            if not _split_tall(mask, labels, stats, pitch):
                break
        return labels, np.column_stack([stats, centroids])

    def _join(
        self, fragments: tuple[np.ndarray, np.ndarray], pitch: float
    ) -> tuple[np.ndarray, int]:
        """Chain fragments left to right into lines: ``(line number per pixel, line count)``.

        Each fragment (left to right) extends the chain whose last fragment ends closest
        before it, within ``join_gap``, and sits at nearly the same height (``join_dy``,
        compared with that last fragment, so a line may wander up or down). Fragments
        narrower than half a pitch (dots, commas, loose pieces of long descenders) start or
        extend no chain: they could bridge two lines; their ink still goes to the nearest
        line in :func:`_assign_ink`.
        """
        labels, stats = fragments
        x0s, widths, cys = stats[:, 0], stats[:, 2], stats[:, 6]
        chains: list[list[int]] = []
        ends: list[tuple[float, float]] = []  # (right end, middle height of last fragment)
        order = sorted(
            (i for i in range(1, len(stats)) if widths[i] >= 0.5 * pitch), key=lambda i: x0s[i]
        )
        for i in order:
            best, best_cost = -1, float("inf")
            for c, (x1, y) in enumerate(ends):
                gap, dy = x0s[i] - x1, abs(cys[i] - y)
                if gap > self.join_gap * pitch or gap < -0.5 * pitch or dy > self.join_dy * pitch:
                    continue
                cost = dy + 0.25 * max(gap, 0.0)
                if cost < best_cost:
                    best, best_cost = c, cost
            if best < 0:
                chains.append([i])
                ends.append((x0s[i] + widths[i], cys[i]))
            else:
                chains[best].append(i)
                ends[best] = (max(ends[best][0], x0s[i] + widths[i]), cys[i])
        full, short = [], []
        for members in chains:
            x0 = min(stats[i, 0] for i in members)
            x1 = max(stats[i, 0] + stats[i, 2] for i in members)
            y0 = min(stats[i, 1] for i in members)
            y1 = max(stats[i, 1] + stats[i, 3] for i in members)
            if y1 - y0 < 0.15 * pitch:  # too flat: what is left of a rule after removal
                continue
            if x1 - x0 >= self.min_line_width * pitch:
                full.append(members)
            elif x1 - x0 >= self.min_short_line_width * pitch:
                short.append(members)
        full_ids = np.array([i for members in full for i in members], dtype=np.int64)
        kept = full + [m for m in short if not _beside_any(m, full_ids, stats, pitch)]
        lut = np.zeros(len(stats), np.int32)  # fragment label -> line number (0: none)
        for n, members in enumerate(kept, start=1):
            lut[members] = n
        return lut[labels], len(kept)


def _beside_any(members: list[int], others: np.ndarray, stats: np.ndarray, pitch: float) -> bool:
    """Whether a fragment of ``members`` lies in the band of one of ``others``: less than
    0.6 pitch above or below it and less than a pitch before or after it."""
    if not len(others):
        return False
    ox0, ow, ocy = stats[others, 0], stats[others, 2], stats[others, 6]
    for i in members:
        x0, w, cy = stats[i, 0], stats[i, 2], stats[i, 6]
        beside = (x0 < ox0 + ow + pitch) & (ox0 < x0 + w + pitch)
        if (beside & (np.abs(ocy - cy) < 0.6 * pitch)).any():
            return True
    return False


#: A fragment may span several lines; each round cuts every tall fragment once.
_MAX_SPLIT_ROUNDS = 4


def _split_tall(mask: np.ndarray, labels: np.ndarray, stats: np.ndarray, pitch: float) -> bool:
    """Cut fragments taller than a line where they narrow most (in place); True if any cut.

    Two lines joined by a long descender or a flourish form one fragment shaped like two
    wide bands with a narrow neck; the row where the fragment is narrowest, between its two
    widest rows, is that neck.
    """
    cut = False
    for i in np.flatnonzero(stats[:, cv2.CC_STAT_HEIGHT] > 0.9 * pitch):
        if i == 0:
            continue
        x, y, w, h = stats[i, :4]
        widths = (labels[y : y + h, x : x + w] == i).sum(axis=1)
        # Search the neck away from the ends, where any fragment tapers.
        margin = max(1, int(0.25 * pitch))
        if h <= 2 * margin:
            continue
        inner = widths[margin : h - margin]
        neck = margin + int(np.argmin(inner))
        upper, lower = widths[:neck].max(), widths[neck:].max()
        if widths[neck] < 0.3 * min(upper, lower):
            rows = slice(y + max(0, neck - 1), y + neck + 2)
            mask[rows, x : x + w][labels[rows, x : x + w] == i] = 0
            cut = True
    return cut


#: A peak of the row profile's autocorrelation counts as the line pitch when it reaches this
#: fraction of the strongest peak; see :func:`estimate_pitch`.
PITCH_PEAK = 0.5


def estimate_pitch(ink: np.ndarray, scale: float) -> float:
    """Line pitch in px: the first strong peak of the row profile's autocorrelation.

    The strongest peak is often at a multiple of the pitch: lines of uneven length (a name,
    a date, a long sentence) make the profile repeat more faithfully two or three lines on
    than one. Taking it made every later length two to four times too large, and lines were
    chained to their neighbours. So the pitch is the first local peak that reaches half the
    strongest.

    Falls back to three letter heights when the page has too few lines for a periodic profile.
    """
    rows = ink.sum(axis=1).astype(np.float64)
    rows -= rows.mean()
    if not rows.any():
        return 3 * scale
    ac = np.correlate(rows, rows, mode="full")[len(rows) - 1 :]
    ac /= ac[0]
    lo, hi = max(2, int(1.2 * scale)), min(len(ac) - 1, int(12 * scale), len(rows) // 2)
    if hi <= lo:
        return 3 * scale
    window = ac[lo - 1 : hi + 1]  # one lag either side, to tell peaks at the window's edges
    inner = window[1:-1]
    strong = max(0.1, PITCH_PEAK * float(inner.max()))
    peaks = np.flatnonzero((inner >= window[:-2]) & (inner >= window[2:]) & (inner >= strong))
    return float(lo + peaks[0]) if len(peaks) else 3 * scale


def prepare(page: Image.Image, work_size: int) -> tuple[np.ndarray, float, float] | None:
    """Steps 1-3 for any segmenter here: ``(ink mask, line pitch, scale factor)``.

    The ink mask is of the working copy (``scale factor`` times the page size), without
    rules and specks; None for a page without text-sized ink.
    """
    gray = np.asarray(page.convert("L"))
    f = min(1.0, work_size / max(gray.shape))
    small = cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else gray
    ink = ink_mask(small)
    scale = estimate_scale(ink)
    if scale is None:
        return None
    ink = _drop_specks(remove_rules(ink, scale), scale)
    return ink, estimate_pitch(ink, scale), f


@dataclass
class _Line:
    bbox: tuple[int, int, int, int]
    polygon: Points
    baseline: Points


def estimate_scale(ink: np.ndarray) -> float | None:
    """Typical letter height in px: median height of mid-sized connected components."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    if n <= 1:
        return None
    hs, ws, areas = stats[1:, cv2.CC_STAT_HEIGHT], stats[1:, cv2.CC_STAT_WIDTH], stats[1:, 4]
    # Dots, commas and noise are tiny; rules and smudges are huge: neither says the text size.
    # (On a small image, a single line say, letters may be a large part of its height.)
    tall = max(ink.shape[0] / 8, 48)
    keep = (hs >= 4) & (areas >= 12) & (hs < tall) & (ws < ink.shape[1] / 3)
    if keep.sum() < 3:
        return None
    return float(np.median(hs[keep]))


def remove_rules(ink: np.ndarray, scale: float) -> np.ndarray:
    """Erase ruled lines and margin rules: straight runs that together span the page.

    A rule on a scan is faint and broken by noise, so it is found as many straight pieces
    (runs of three letter heights) lying in the same row (or column) and covering a quarter
    of the page; only those pieces, thickened by a pixel for their anti-aliased edges, are
    erased. Strokes of the writing that cross a rule keep their other pixels.
    """
    run = max(10, int(3 * scale))
    out = ink.copy()
    for axis, kernel, grow in ((1, (1, run), (3, 1)), (0, (run, 1), (1, 3))):
        pieces = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones(kernel, np.uint8))
        # Coverage of each row (column), pooled over 3 so a slightly tilted rule counts whole.
        cover = np.convolve(pieces.sum(axis=axis), np.ones(3), mode="same") / ink.shape[axis]
        lines = cover > 0.25
        if not lines.any():
            continue
        rules = pieces * (lines[:, None] if axis == 1 else lines[None, :])
        out &= 1 - cv2.dilate(rules.astype(np.uint8), np.ones(grow, np.uint8))
    return out


def reading_order(lines: list[_Line]) -> list[_Line]:
    """Top to bottom by baseline; lines side by side (overlapping rows) left to right."""
    ordered = sorted(lines, key=lambda ln: (ln.bbox[1] + ln.bbox[3]) / 2)
    rows: list[list[_Line]] = []
    for line in ordered:
        y0, y1 = line.bbox[1], line.bbox[3]
        if rows:
            ry0 = min(ln.bbox[1] for ln in rows[-1])
            ry1 = max(ln.bbox[3] for ln in rows[-1])
            overlap = min(y1, ry1) - max(y0, ry0)
            if overlap > 0.5 * min(y1 - y0, ry1 - ry0):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.bbox[0])]


def _drop_specks(ink: np.ndarray, scale: float) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    small = np.flatnonzero(stats[:, 4] < max(4, (scale * 0.15) ** 2))
    small = small[small > 0]
    if len(small):
        ink = ink.copy()
        ink[np.isin(labels, small)] = 0
    return ink


def _assign_ink(
    ink: np.ndarray, core_ids: np.ndarray, n_lines: int, *, max_distance: float
) -> list[_Line]:
    """Give each ink pixel to the nearest line core; describe each line from its pixels."""
    if not n_lines:
        return []
    # Distance to the nearest core pixel, and which core pixel it is (each pixel its own label).
    dist, nearest = cv2.distanceTransformWithLabels(
        (core_ids == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    zero_y, zero_x = np.nonzero(core_ids)  # pixel labels are assigned in scan order
    owner_of_label = np.concatenate([[0], core_ids[zero_y, zero_x]])
    owner = owner_of_label[nearest]
    owner[(ink == 0) | (dist > max_distance)] = 0
    inks, cores = _pixels_by_id(owner), _pixels_by_id(core_ids)
    return [_describe(*inks[i], *cores[i]) for i in range(1, n_lines + 1) if i in inks]


def _pixels_by_id(ids: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{id: (xs, ys)}`` of the pixels carrying each non-zero id, in one pass."""
    ys, xs = np.nonzero(ids)
    values = ids[ys, xs]
    order = np.argsort(values, kind="stable")
    ys, xs, values = ys[order], xs[order], values[order]
    starts = np.flatnonzero(np.diff(values, prepend=-1))
    ends = [*starts[1:], len(values)]
    return {int(values[a]): (xs[a:b], ys[a:b]) for a, b in zip(starts, ends, strict=True)}


def _describe(xs: np.ndarray, ys: np.ndarray, cxs: np.ndarray, cys: np.ndarray) -> _Line:
    """Box, envelope polygon and baseline of a line's ink (``xs, ys``) and core (``cxs, cys``)."""
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    # Envelope polygon: top and bottom of the line's ink in vertical strips.
    n_bins = max(2, min(40, (x1 - x0) // 8))
    edges = np.linspace(x0, x1, n_bins + 1)
    strip = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, n_bins - 1)
    top, bottom = np.full(n_bins, y1, float), np.full(n_bins, y0, float)
    np.minimum.at(top, strip, ys)
    np.maximum.at(bottom, strip, ys + 1)
    filled = bottom > top
    centres = (edges[:-1] + edges[1:]) / 2
    tx, ty, by = centres[filled], top[filled], bottom[filled]
    upper = [(x0, int(ty[0]))] + [(int(x), int(y)) for x, y in zip(tx, ty, strict=True)]
    upper.append((x1, int(ty[-1])))
    lower = [(x1, int(by[-1]))] + [
        (int(x), int(y)) for x, y in zip(tx[::-1], by[::-1], strict=True)
    ]
    lower.append((x0, int(by[0])))
    # Baseline: the core's lower edge, fitted with a straight line (handwriting wanders, but
    # a line is what ALTO/PAGE consumers draw and what the recognizer crop needs).
    base_y = _lower_edge_fit(cxs, cys, x0, x1)
    return _Line((x0, y0, x1, y1), upper + lower, [(x0, base_y[0]), (x1, base_y[1])])


def _lower_edge_fit(xs: np.ndarray, ys: np.ndarray, x0: int, x1: int) -> tuple[int, int]:
    n_bins = max(2, min(20, (x1 - x0) // 16))
    edges = np.linspace(xs.min(), xs.max() + 1, n_bins + 1)
    strip = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, n_bins - 1)
    low = np.full(n_bins, -1.0)
    np.maximum.at(low, strip, ys)
    ok = low >= 0
    cx = ((edges[:-1] + edges[1:]) / 2)[ok]
    if ok.sum() >= 2:
        slope, icpt = np.polyfit(cx, low[ok], 1)
    else:
        slope, icpt = 0.0, float(low[ok].mean())
    return round(slope * x0 + icpt), round(slope * x1 + icpt)


def _scale_line(line: _Line, k: float, size: tuple[int, int]) -> LineBox:
    w, h = size

    def pt(x: float, y: float) -> tuple[int, int]:
        return min(w, max(0, round(x * k))), min(h, max(0, round(y * k)))

    x0, y0, x1, y1 = line.bbox
    return LineBox(
        bbox=(*pt(x0, y0), *pt(x1, y1)),
        polygon=[pt(x, y) for x, y in line.polygon],
        baseline=[pt(x, y) for x, y in line.baseline],
    )
