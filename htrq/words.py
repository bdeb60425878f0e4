"""A line's words: text, box in page pixels and confidence, in reading order.

The worker stores each line's words as it read them (``Line.words``, ``Line.box_source``):
boxes from the CTC alignment of the text the decoder chose (``"ctc"``) where the model has a
CTC head, otherwise the line's box split by character counts (``"estimate"``). What is served
is :func:`served_words`: the stored words, re-fitted to a person's correction, or estimated
for a line stored before words were (its rows have none).

Corrections are re-fitted here, from the model's word boxes, rather than aligned again by the
model: the API has no model (it never imports torch), and keeping each line's CTC posteriors
(96 columns by 197 characters, 75 kB a line) to align a correction later would cost far more
storage than the lines themselves. Words a person left as they were keep their boxes; a run
of changed words shares the span of the words it replaced, by character counts. That keeps
the line's ``box_source``: the boxes still come from where the model saw the words.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

BoxSource = Literal["ctc", "estimate"]


class Word(TypedDict):
    text: str
    box: list[int]  #: x0, y0, x1, y1 in page pixels
    confidence: float


def estimate_words(text: str, bbox: Sequence[int], confidence: float) -> list[Word]:
    """``text``'s words on ``bbox`` split by character counts (a space counts as one), each
    with the line's confidence: for lines nothing aligned."""
    x0, y0, x1, y1 = (int(v) for v in bbox)
    per_char = (x1 - x0) / max(1, len(text))
    out: list[Word] = []
    pos = 0
    for word in text.split(" "):
        if word:
            left = x0 + round(pos * per_char)
            right = max(left, x0 + round((pos + len(word)) * per_char))
            out.append(Word(text=word, box=[left, y0, right, y1], confidence=confidence))
        pos += len(word) + 1
    return out


def refit_words(words: Sequence[Word], text: str, bbox: Sequence[int]) -> list[Word]:
    """``words`` (the model's) fitted to ``text`` (a person's reading of the same line).

    Words matched unchanged keep their boxes and confidences; each run of new words takes
    the span of the old words it replaces (or the gap between its neighbours, where it
    replaces none), split by character counts. A person wrote the new words: their
    confidence is 1.
    """
    new = [w for w in text.split(" ") if w]
    if not words:
        return estimate_words(" ".join(new), bbox, 1.0)
    old = [w["text"] for w in words]
    x0, y0, x1, y1 = (int(v) for v in bbox)
    out: list[Word] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.extend(Word(**words[i]) for i in range(i1, i2))
            continue
        if j1 == j2:
            continue  # words the person deleted
        if i1 < i2:
            span = words[i1:i2]
            left, right = span[0]["box"][0], max(w["box"][2] for w in span)
            top, bottom = min(w["box"][1] for w in span), max(w["box"][3] for w in span)
        else:  # inserted between two words: the gap between them
            left = words[i1 - 1]["box"][2] if i1 > 0 else x0
            right = words[i1]["box"][0] if i1 < len(words) else x1
            if right <= left:
                right = left
            top, bottom = y0, y1
        for w in estimate_words(" ".join(new[j1:j2]), [left, top, right, bottom], 1.0):
            out.append(w)
    return out


def served_words(
    *,
    model_text: str,
    correction: str | None,
    words: Any,
    box_source: str | None,
    bbox: Sequence[int],
    confidence: float,
) -> tuple[list[Word], BoxSource]:
    """The words a stored line is served with, and where their boxes come from.

    ``words`` is the stored column (a list, JSON text, or None for a line stored before
    words were); ``correction`` a person's text, if any.
    """
    stored = json.loads(words) if isinstance(words, str) else words
    if stored is None:
        source: BoxSource = "estimate"
        stored = estimate_words(model_text, bbox, confidence)
    else:
        source = "ctc" if box_source == "ctc" else "estimate"
    if correction is not None and correction != model_text:
        return refit_words(stored, correction, bbox), source
    return list(stored), source
