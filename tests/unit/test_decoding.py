"""The per-line length limit: a crop is never read as more text than it can hold."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

import worker.recognition.decoding
from worker.recognition.decoding import LengthLimit, length_limits
from worker.recognition.recognizer import Recognizer
from worker.training.build import build_tiny_model


def test_rows_past_their_limit_may_only_end():
    """Once a line's beams reach its limit, every token but the end token is ruled out, and
    the end token keeps the score the model gave it; lines under their limit are untouched."""
    scores = torch.log_softmax(torch.randn(4, 7), dim=-1)
    before = scores.clone()
    ids = torch.zeros(4, 3, dtype=torch.long)  # start token + 2 generated
    out = LengthLimit([2, 5], eos_token_id=2, num_beams=2)(ids, scores)
    assert torch.isinf(out[:2, [0, 1, 3, 4, 5, 6]]).all()
    assert torch.equal(out[:2, 2], before[:2, 2])
    assert torch.equal(out[2:], before[2:])


def test_limits_follow_the_crop_shape():
    """A square crop holds 14 characters; a long line is bounded by max_new_tokens only."""
    square, line, speck = (
        Image.new("L", (64, 64)),
        Image.new("L", (2000, 40)),
        Image.new("L", (1, 9)),
    )
    assert length_limits([square, line, speck], 96) == [14, 96, 6]


def _boxes() -> list[Image.Image]:
    ims = []
    for w, h in [(40, 100), (100, 100), (600, 40)]:
        im = Image.new("L", (w, h), 255)
        ImageDraw.Draw(im).rectangle((3, 3, w - 4, h - 4), outline=0, width=3)
        ims.append(im)
    return ims


@pytest.fixture(scope="module")
def babbler(tmp_path_factory):
    """A tiny random model, seeded: with beams it writes to max_new_tokens."""
    torch.manual_seed(0)
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.mark.parametrize("beams", [1, 3])
def test_a_crop_is_never_read_longer_than_it_can_hold(babbler, beams, monkeypatch):
    """Tall crops are cut at their limit; without the limit the same model writes on."""
    rec = Recognizer.load(model=str(babbler), num_beams=beams, max_new_tokens=40)
    crops = _boxes()
    limits = length_limits(crops, 40)
    read = rec(crops)
    for r, limit in zip(read, limits, strict=True):
        assert len(r.text) <= limit  # one character a token
        assert 0.0 <= r.confidence <= 1.0
    monkeypatch.setattr(worker.recognition.decoding, "MAX_CHARS_PER_HEIGHT", 1e6)
    unlimited = rec(crops)
    if beams > 1:  # this random model writes visible characters only with beams
        assert len(unlimited[0].text) > limits[0] >= len(read[0].text)
