"""Joint CTC/attention decoding: the prefix scores against brute force, and the recognizer
with and without a CTC head."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from worker.recognition.ctc_prefix import CTCPrefixScore, load_ctc_head
from worker.recognition.recognizer import BUILTIN_MODEL, Recognizer
from worker.training.data import read_lines_tsv

HELD_OUT = Path(__file__).parents[1] / "resources" / "heldout-lines"

BLANK, START, EOS = 0, 1, 2
CHARS = (3, 4, 5)
FRAMES = 5


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, prev = [], None
    for t in path:
        if t != prev and t != BLANK:
            out.append(t)
        prev = t
    return tuple(out)


def brute_force(logp: torch.Tensor, prefix: tuple[int, ...], whole: bool) -> float:
    """log P(the reading starts with ``prefix``), or is exactly it (``whole``), summed over
    every frame-by-frame path."""
    total = 0.0
    for path in itertools.product((BLANK, *CHARS), repeat=FRAMES):
        read = collapse(path)
        if read == prefix if whole else read[: len(prefix)] == prefix:
            total += math.exp(sum(logp[t, c].item() for t, c in enumerate(path)))
    return math.log(total)


@pytest.fixture
def ctc_logp() -> torch.Tensor:
    logits = torch.randn(1, FRAMES, 6, generator=torch.Generator().manual_seed(3)) * 2
    logits[..., START] = logits[..., EOS] = -1e4  # CTC never emits them
    return logits.log_softmax(-1)


def test_prefix_scores_match_brute_force(ctc_logp):
    """With weight 1 a step's score is log P_ctc(g c ...) - log P_ctc(g ...): the first step
    gives the prefix scores of each letter, the second of each letter after the chosen one,
    and the end token the probability of the reading being exactly the prefix."""
    scorer = CTCPrefixScore(ctc_logp, blank=BLANK, eos=EOS, weight=1.0, never=(START,))
    flat = torch.zeros(1, 6)
    first = scorer(torch.tensor([[START]]), flat.clone())
    for c in CHARS:
        assert first[0, c].item() == pytest.approx(brute_force(ctc_logp[0], (c,), False), abs=1e-4)
    assert first[0, BLANK] == -math.inf and first[0, START] == -math.inf
    second = scorer(torch.tensor([[START, 4]]), flat.clone())
    g = brute_force(ctc_logp[0], (4,), False)
    for c in CHARS:  # 4 after 4 needs a blank between: the repeat rule is exercised too
        want = brute_force(ctc_logp[0], (4, c), False) - g
        assert second[0, c].item() == pytest.approx(want, abs=1e-4)
    whole = brute_force(ctc_logp[0], (4,), True)
    assert second[0, EOS].item() == pytest.approx(whole - g, abs=1e-4)


def test_weight_mixes_the_decoder_and_ctc(ctc_logp):
    """The decoder's log-probabilities and CTC's prefix score are mixed by the weight."""
    att = torch.randn(1, 6, generator=torch.Generator().manual_seed(5))
    full = CTCPrefixScore(ctc_logp, blank=BLANK, eos=EOS, weight=1.0, never=(START,))
    half = CTCPrefixScore(ctc_logp, blank=BLANK, eos=EOS, weight=0.5, never=(START,))
    ids = torch.tensor([[START]])
    ctc, mixed = full(ids, att.clone()), half(ids, att.clone())
    want = 0.5 * att.log_softmax(-1)[0, 3] + 0.5 * ctc[0, 3]
    assert mixed[0, 3].item() == pytest.approx(want.item(), abs=1e-5)


def test_only_the_decoders_likeliest_tokens_are_scored(ctc_logp):
    """Partial scoring: tokens the decoder ranks below the candidates are ruled out, the end
    token never is."""
    att = torch.tensor([[0.0, 0.0, -9.0, 5.0, 4.0, -5.0]])
    scorer = CTCPrefixScore(ctc_logp, blank=BLANK, eos=EOS, weight=0.5, candidates=2)
    out = scorer(torch.tensor([[START]]), att)
    assert torch.isfinite(out[0, [3, 4, EOS]]).all()
    assert out[0, 5] == -math.inf


def test_beams_follow_their_own_prefixes(ctc_logp):
    """With beams, rows are re-ordered between steps: each row is scored from its own
    prefix, wherever that prefix stood a step before."""
    two = ctc_logp.expand(1, FRAMES, 6)
    scorer = CTCPrefixScore(two, blank=BLANK, eos=EOS, weight=1.0, num_beams=2)
    flat = torch.zeros(2, 6)
    scorer(torch.tensor([[START], [START]]), flat.clone())
    out = scorer(torch.tensor([[START, 5], [START, 3]]), flat.clone())
    for row, g in ((0, 5), (1, 3)):
        want = brute_force(ctc_logp[0], (g, 4), False) - brute_force(ctc_logp[0], (g,), False)
        assert out[row, 4].item() == pytest.approx(want, abs=1e-4)


def test_weight_outside_its_range_is_refused(ctc_logp):
    with pytest.raises(ValueError, match="CTC weight"):
        CTCPrefixScore(ctc_logp, blank=BLANK, eos=EOS, weight=0.0)


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_confidence_is_the_decoders_probability_of_the_text_greedy_or_with_beams():
    """With the shipped head, greedy and beam search read committed lines, and a line read
    the same both ways has the same confidence: the decoder's own probability of the text,
    not the joint score beam search ranks by."""
    head = load_ctc_head(BUILTIN_MODEL)
    assert head is not None and head.weight.shape == (197, 256)
    crops = [Image.open(p).convert("L") for p, _ in read_lines_tsv(HELD_OUT)[:8]]
    greedy = Recognizer.load(model="builtin", num_beams=1, ctc_weight=0.4)
    beams = Recognizer.load(model="builtin", num_beams=3, ctc_weight=0.4)
    assert greedy.ctc_head is not None and beams.ctc_head is not None
    same = [(g, b) for g, b in zip(greedy(crops), beams(crops), strict=True) if g.text == b.text]
    assert len(same) >= 4
    for g, b in same:
        assert b.confidence == pytest.approx(g.confidence, abs=1e-3)
