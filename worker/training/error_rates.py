"""Character and word error rates."""

from __future__ import annotations

from collections.abc import Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (characters or words)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate: total edits over total reference characters."""
    total = sum(len(r) for r in refs)
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True)) / max(1, total)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate: total word edits over total reference words."""
    total = sum(len(r.split()) for r in refs)
    return sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True)) / max(
        1, total
    )
