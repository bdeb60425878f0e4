"""The shipped model reads handwriting it was not trained on: lines in held-out fonts, and
real lines of writers its training held out (both committed under tests/resources)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from worker.recognition.recognizer import Recognizer
from worker.training.data import read_lines_tsv
from worker.training.evaluate import EvalResult, evaluate

#: Seconds each (the shipped model reading its committed lines): left out of the fast subset.
pytestmark = pytest.mark.slow

HELD_OUT = Path(__file__).parents[1] / "resources" / "heldout-lines"
REAL = Path(__file__).parents[1] / "resources" / "real-lines"

#: Bound on greedy CER over the 40 committed lines (rendered with fonts held out of
#: training). Measured CER of the shipped model is in its model card; the bound leaves
#: room for batch-size and platform differences only.
MAX_CER = 0.05

#: Bound on greedy CER over the 40 committed real lines (French volunteers' hands of 2024 and
#: soldiers' wills of 1914-18, from writers held out of training). Measured 0.239 (model
#: card); the synthetic-only model before real-line training read them at 0.609.
MAX_REAL_CER = 0.26


@pytest.fixture(scope="module")
def samples() -> list[tuple[Image.Image, str]]:
    return [(Image.open(p).convert("L"), t) for p, t in read_lines_tsv(HELD_OUT)]


@pytest.fixture(scope="module")
def greedy() -> Recognizer:
    return Recognizer.load(model="builtin", num_beams=1, batch_size=16)


@pytest.fixture(scope="module")
def real_lines() -> list[tuple[Image.Image, str]]:
    return [(Image.open(p).convert("L"), t) for p, t in read_lines_tsv(REAL)]


@pytest.fixture(scope="module")
def real_result(greedy, real_lines) -> EvalResult:
    """The built-in model on the committed real lines, as the service reads a line page."""
    return evaluate(greedy, real_lines)


@pytest.fixture(scope="module")
def result(samples, greedy) -> EvalResult:
    """The built-in model on the committed lines, read as the service reads a line page
    (with its CTC head's prefix scores, the default)."""
    return evaluate(greedy, samples)


def test_shipped_model_reads_held_out_fonts(result):
    """Greedy CER of the built-in model on held-out-font lines stays under the bound."""
    assert result.lines == 40
    assert result.cer <= MAX_CER


def test_the_ctc_head_reads_no_worse_than_the_decoder_alone(real_result, real_lines):
    """Joint CTC/attention decoding is the default because it reads real hands better (chosen
    on the real validation lines): on the committed real lines it must not read worse than
    the decoder alone (stage 9 measured 0.182 against 0.201; on the 40 clean font lines the
    head costs it 0.4 points, on 200 of them it gains 0.2, so those decide nothing)."""
    alone = evaluate(
        Recognizer.load(model="builtin", num_beams=1, batch_size=16, ctc_weight=0), real_lines
    )
    assert real_result.cer <= alone.cer


def test_confidence_separates_right_from_wrong_lines(result):
    """Lines read exactly right carry a higher mean confidence than lines with errors."""
    assert result.conf_exact > result.conf_wrong


def test_lines_not_flagged_for_review_read_better_than_average(result):
    """The API's needs_review threshold picks out lines with errors: what it leaves unflagged
    reads better than the set as a whole, and most of what it flags is wrong."""
    assert result.flagged > 0
    assert result.unflagged_cer < result.cer
    assert result.flagged_wrong > 0.5


def test_shipped_model_reads_real_handwriting_of_unseen_writers(real_result):
    """Greedy CER on real lines of writers held out of training stays under the bound."""
    assert real_result.lines == 40
    assert real_result.cer <= MAX_REAL_CER


def test_review_flag_picks_out_the_worse_real_lines(real_result):
    """On real lines the default needs_review threshold flags some lines, not nearly all of
    them, and what it leaves unflagged reads better than the set as a whole."""
    assert 0 < real_result.flagged < 0.8
    assert real_result.unflagged_cer < real_result.cer
