"""Where each word of a reading lies on its line: CTC forced alignment, then the ink.

The decoder chooses the text; it says nothing about where the letters are. The CTC head over
the encoder's columns does: the Viterbi path of the chosen text through the head's
posteriors (:func:`ctc_align`) gives each token the columns it was read from, in order. That
path is monotonic and says roughly where each letter is (CTC fires one or two columns per
letter, not over its whole width), so a word's edges are not taken from it directly: the
boundary between two words is the widest blank run of ink columns between the last letter
of one and the first of the next (:func:`word_boxes`), and each word's box is then its ink
within those bounds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: A grey level below this (on a contrast-stretched line, as ``lineimage.trim_to_ink``) is ink.
INK_BELOW = 128
#: A column holds ink when at least this many of its pixels are ink (a speck of noise does not
#: hold a word's edge open).
INK_PIXELS = 2


@dataclass(frozen=True)
class WordBox:
    text: str
    #: x0, y0, x1, y1 in the line image's pixels; None where nothing aligned the line.
    box: tuple[int, int, int, int] | None
    confidence: float
    #: The geometric mean of the CTC head's probabilities of the word's characters where the
    #: alignment put them; None without an alignment. Not mixed into ``confidence``: on the
    #: real validation lines it did not make the review threshold's split any better
    #: (docs/benchmarks.md, "Words").
    alignment: float | None = None


def ctc_align(logp: np.ndarray, tokens: Sequence[int], blank: int) -> list[tuple[int, int]] | None:
    """The first and last frame of each token on the Viterbi path of ``tokens`` through
    ``logp`` (frames x vocabulary log-probabilities), or None where no path exists (more
    letters, and blanks between repeats, than frames).

    The usual CTC topology: blank, token, blank, token, ..., blank; a state stays, steps to
    the next, or skips a blank between two different tokens. One numpy step per frame over
    all states at once (a line is at most a few hundred states by ~100 frames).
    """
    frames = logp.shape[0]
    n = len(tokens)
    if n == 0:
        return []
    repeats = sum(a == b for a, b in itertools.pairwise(tokens))
    if n + repeats > frames:
        return None
    ext = np.full(2 * n + 1, blank, dtype=np.int64)
    ext[1::2] = tokens
    emit = logp[:, ext].astype(np.float64)  # (frames, states)
    states = len(ext)
    skip = np.zeros(states, dtype=bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]  # a token may follow the previous one directly
    back = np.zeros((frames, states), dtype=np.int8)
    delta = np.full(states, -np.inf)
    delta[:2] = emit[0, :2]
    cand = np.full((3, states), -np.inf)
    for t in range(1, frames):
        cand[0] = delta
        cand[1, 1:] = delta[:-1]
        cand[2, 2:] = np.where(skip[2:], delta[:-2], -np.inf)
        back[t] = cand.argmax(0)
        delta = cand[back[t], np.arange(states)] + emit[t]
    end = states - 1 if delta[-1] >= delta[-2] else states - 2
    if not np.isfinite(delta[end]):
        return None
    path = np.empty(frames, dtype=np.int64)
    s = end
    for t in range(frames - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])  # a Python int: int8 arithmetic would overflow past 127 states
    spans = []
    for k in range(n):
        hit = np.flatnonzero(path == 2 * k + 1)
        spans.append((int(hit[0]), int(hit[-1])))
    return spans


def word_boxes(
    text: str,
    logps: Sequence[float] | None,
    spans: Sequence[tuple[float, float]] | None,
    image: Image.Image | None,
    fallback: float,
    ctc_logps: Sequence[float] | None = None,
) -> list[WordBox]:
    """``text``'s words (split on single spaces, empty ones dropped), each with its box on
    ``image`` (the prepared line the spans refer to) and its confidence.

    ``logps``: the decoder's log-probability of each character (of the token that wrote it);
    a word's confidence is their geometric mean (``fallback``, the line's, without them).
    ``spans``: each character's x range from the alignment; without them (or an image) the
    words have no box.
    """
    runs = _word_runs(text)
    confs = [
        math.exp(sum(logps[a:b]) / (b - a))
        if logps is not None and len(logps) == len(text)
        else fallback
        for a, b in runs
    ]
    aligned: list[float | None] = [
        math.exp(sum(ctc_logps[a:b]) / (b - a))
        if ctc_logps is not None and len(ctc_logps) == len(text)
        else None
        for a, b in runs
    ]
    if spans is None or image is None or len(spans) != len(text) or not runs:
        return [
            WordBox(text[a:b], None, c, g)
            for (a, b), c, g in zip(runs, confs, aligned, strict=True)
        ]
    ink = np.asarray(image.convert("L")) < INK_BELOW
    cols = np.where(ink.sum(axis=0) >= INK_PIXELS, ink.sum(axis=0), 0)
    ink = ink & (cols > 0)[None, :]
    width = ink.shape[1]
    # Each boundary between two words: the widest blank run between their nearest letters.
    bounds = [0]
    for (_, b), (a, _) in itertools.pairwise(runs):
        left = (spans[b - 1][0] + spans[b - 1][1]) / 2
        right = (spans[a][0] + spans[a][1]) / 2
        bounds.append(_gap(cols, int(left), max(int(left) + 1, math.ceil(right))))
    bounds.append(width)
    out = []
    for i, ((a, b), conf) in enumerate(zip(runs, confs, strict=True)):
        lo, hi = bounds[i], max(bounds[i] + 1, bounds[i + 1])
        out.append(WordBox(text[a:b], _ink_box(ink, lo, hi), conf, aligned[i]))
    return out


def _word_runs(text: str) -> list[tuple[int, int]]:
    """[start, end) of each word of ``text`` (runs of characters other than space)."""
    runs, start = [], None
    for i, ch in enumerate(text + " "):
        if ch == " ":
            if start is not None:
                runs.append((start, i))
            start = None
        elif start is None:
            start = i
    return runs


def _gap(cols: np.ndarray, lo: int, hi: int) -> int:
    """The middle of the widest run of ink-free columns in [lo, hi), or of the faintest
    column there where none is free."""
    lo, hi = max(0, lo), min(len(cols), hi)
    if hi <= lo:
        return min(max(0, lo), len(cols))
    part = cols[lo:hi]
    free = part == 0
    if not free.any():
        return lo + int(np.argmin(part))
    best, best_len, start = 0, 0, None
    for i, f in enumerate(np.append(free, False)):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start > best_len:
                best, best_len = start, i - start
            start = None
    return lo + best + best_len // 2


def _ink_box(ink: np.ndarray, lo: int, hi: int) -> tuple[int, int, int, int]:
    """The ink of columns [lo, hi) as a box; the whole strip where it holds no ink."""
    part = ink[:, lo:hi]
    xs = np.flatnonzero(part.any(axis=0))
    ys = np.flatnonzero(part.any(axis=1))
    if len(xs) == 0 or len(ys) == 0:
        return lo, 0, hi, int(ink.shape[0])
    return lo + int(xs[0]), int(ys[0]), lo + int(xs[-1]) + 1, int(ys[-1]) + 1
