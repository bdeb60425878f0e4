"""Lines wider than the recognizer's input, read in overlapping pieces and re-joined.

:func:`split_wide` and :func:`join_pieces` keep long lines from being squashed into the
recognizer's fixed input width; :func:`split_all` and :func:`join_all` do it for many lines at
once (``worker.recognition.reading``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
from PIL import Image


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
        pieces.append(_piece(crop, start, end))
        start = gap_near(end - shared)
    pieces.append(_piece(crop, start, w))
    return pieces


#: Set in each piece's ``Image.info``: where the piece starts on its line (x, pixels), so that
#: what is found on a piece (its words' boxes) can be placed on the line.
PIECE_X_KEY = "htrq_piece_x"


def _piece(crop: Image.Image, start: int, end: int) -> Image.Image:
    out = crop.crop((start, 0, end, crop.height))
    out.info[PIECE_X_KEY] = start
    return out


def join_pieces(texts: list[str], *, min_overlap: int = 3) -> str:
    """Re-join the texts of :func:`split_wide`'s pieces, merging their overlap.

    The end of one text and the start of the next read the same stretch of ink; the longest
    common run of characters between them (at least ``min_overlap`` long, near the seam) is
    kept once. Without such a run the texts are joined with a space.
    """
    return join_map(texts, min_overlap=min_overlap)[0]


#: Where a character of a joined text came from: (piece, index in that piece's text), or None
#: for a space put between two pieces that shared nothing.
Source = tuple[int, int] | None


def join_map(texts: Sequence[str], *, min_overlap: int = 3) -> tuple[str, list[Source]]:
    """:func:`join_pieces`, and where each character of the result came from (so that what
    was found per character of a piece, its place on the line, follows it)."""
    out, where = "", list[Source]()
    for p, raw in enumerate(texts):
        text = raw.strip()
        lead = len(raw) - len(raw.lstrip())
        src: list[Source] = [(p, lead + i) for i in range(len(text))]
        if not out:
            out, where = text, src
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
            cut = len(out) - len(tail) + m.a
            out, where = out[:cut] + text[m.b :], where[:cut] + src[m.b :]
        else:
            out, where = f"{out} {text}", [*where, None, *src]
    return out, where


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
