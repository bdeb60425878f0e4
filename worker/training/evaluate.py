"""Evaluate a recognizer on a ``lines.tsv`` folder: CER, WER, speed, and whether confidence
tells right lines from wrong ones."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from htrq.resources import REVIEW_BELOW
from worker.recognition.reading import line_reader
from worker.recognition.recognizer import Recognizer
from worker.training.error_rates import cer, edit_distance, wer


@dataclass(frozen=True)
class EvalResult:
    lines: int
    cer: float
    wer: float
    lines_per_s: float
    #: Lines per second of this process's CPU time (every thread's): the reading's own cost,
    #: which other work on a busy machine does not change as it changes ``lines_per_s``.
    lines_per_cpu_s: float
    conf_exact: float  #: mean confidence of lines read exactly right
    conf_wrong: float  #: mean confidence of lines with at least one error
    low_conf_cer: float  #: CER of the 10% of lines with the lowest confidence
    low_conf_ratio: float  #: ``low_conf_cer`` over the overall CER (>= 3 wanted)
    review_below: float  #: the API's ``needs_review`` threshold these figures are for
    flagged: float  #: share of lines below it (what a person is asked to check)
    flagged_wrong: float  #: share of the flagged lines that hold an error
    unflagged_cer: float  #: CER of the lines not flagged (what is trusted unchecked)
    #: (lines, CER) for each value of ``groups`` (such as the font of each line), when given
    by_group: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: (threshold, flagged, flagged_wrong, unflagged_cer) for each threshold of a sweep, to
    #: choose ``review_below`` for a model
    review_sweep: list[tuple[float, float, float, float]] = field(default_factory=list)


def evaluate(
    recognizer: Recognizer,
    samples: list[tuple[Image.Image, str]],
    *,
    review_below: float = REVIEW_BELOW,
    groups: list[str] | None = None,
    sweep: Sequence[float] = (),
) -> EvalResult:
    """Read every line as the service reads a ``mode=line`` page: trimmed to its ink, split
    when wider than the model's input, the pieces' texts re-joined (timed, like the rest)."""
    refs = [t for _, t in samples]
    start, cpu = time.perf_counter(), time.process_time()
    # A line the model failed on (None) counts as read as nothing, with no confidence.
    read = [
        (r.text, r.confidence) if r else ("", 0.0)
        for r in line_reader(recognizer)([im for im, _ in samples])
    ]
    elapsed = time.perf_counter() - start
    cpu_spent = time.process_time() - cpu
    hyps = [text for text, _ in read]
    confs = [conf for _, conf in read]
    right = [c for c, r, h in zip(confs, refs, hyps, strict=True) if r == h]
    wrong = [c for c, r, h in zip(confs, refs, hyps, strict=True) if r != h]
    overall = cer(refs, hyps)
    k = max(1, len(samples) // 10)
    low = sorted(range(len(samples)), key=lambda i: confs[i])[:k]
    low_cer = _cer_of(low, refs, hyps)
    flagged, flagged_wrong, unflagged_cer = _review(review_below, confs, refs, hyps)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups or []):
        members.setdefault(g, []).append(i)
    return EvalResult(
        lines=len(samples),
        cer=overall,
        wer=wer(refs, hyps),
        lines_per_s=len(samples) / elapsed if elapsed else 0.0,
        lines_per_cpu_s=len(samples) / cpu_spent if cpu_spent else 0.0,
        conf_exact=sum(right) / len(right) if right else float("nan"),
        conf_wrong=sum(wrong) / len(wrong) if wrong else float("nan"),
        low_conf_cer=low_cer,
        low_conf_ratio=low_cer / overall if overall else float("nan"),
        review_below=review_below,
        flagged=flagged,
        flagged_wrong=flagged_wrong,
        unflagged_cer=unflagged_cer,
        by_group={g: (len(idx), _cer_of(idx, refs, hyps)) for g, idx in sorted(members.items())},
        review_sweep=[(t, *_review(t, confs, refs, hyps)) for t in sweep],
    )


def _review(
    below: float, confs: list[float], refs: list[str], hyps: list[str]
) -> tuple[float, float, float]:
    """(share of lines flagged below ``below``, share of those holding an error, CER of the
    lines not flagged)."""
    flagged = [i for i, c in enumerate(confs) if c < below]
    unflagged = [i for i, c in enumerate(confs) if c >= below]
    return (
        len(flagged) / len(confs) if confs else float("nan"),
        sum(refs[i] != hyps[i] for i in flagged) / len(flagged) if flagged else float("nan"),
        _cer_of(unflagged, refs, hyps),
    )


def _cer_of(idx: list[int], refs: list[str], hyps: list[str]) -> float:
    """CER over the lines at positions ``idx``."""
    return sum(edit_distance(refs[i], hyps[i]) for i in idx) / max(
        1, sum(len(refs[i]) for i in idx)
    )
