"""The word prior: a lexicon's bonus in the beam search, and what it must leave alone."""

from __future__ import annotations

import gzip
import math

import pytest
import torch

from worker.recognition.word_prior import (
    Lexicon,
    WordPrior,
    available_languages,
    letter_runs,
    shipped_lexicon,
    token_texts,
)
from worker.training.build import build_tokenizer

COUNTS = {"the": 50, "then": 10, "they": 10, "sincerely": 2, "most": 8, "l'étoffe": 1}


def test_words_are_runs_of_letters_lower_cased():
    """Apostrophes, digits and punctuation cut words; case is ignored."""
    assert letter_runs("L'étoffe, 1905 don't") == ["l", "étoffe", "don", "t"]


def test_the_bonus_is_the_log_ratio_of_the_lexicon_to_the_letter_baseline():
    """After "the", the lexicon ends the word with 50 of 70 and writes n or y with 10 each."""
    lex = Lexicon("en", COUNTS)
    floor = 0.1
    end = lex.end
    expected = math.log(0.9 * 50 / 70 + floor * end) - math.log(end)
    assert lex.bonus("the", None, floor) == pytest.approx(expected)
    base_n = (1 - end) * lex.letters["n"]
    assert lex.bonus("the", "n", floor) == pytest.approx(
        math.log(0.9 * 10 / 70 + floor * base_n) - math.log(base_n)
    )


def test_leaving_the_lexicon_costs_log_floor_once_then_nothing():
    """A name the lexicon lacks pays log(floor) where it leaves, and no more after."""
    lex = Lexicon("en", COUNTS)
    assert lex.bonus("th", "x", 0.1) == pytest.approx(math.log(0.1))
    assert lex.bonus("thx", "q", 0.1) == 0.0
    assert lex.bonus("thxq", None, 0.1) == 0.0
    # Digits and punctuation have no opinion of their own.
    assert lex.score("1905, 12", 0.1) == 0.0


def test_a_dictionary_reading_scores_above_a_misreading():
    """The shipped English lexicon prefers the words the 1905 letters hold."""
    en = shipped_lexicon("en")
    assert en.score("Most Sincerely", 0.1) > en.score("Most Senciret", 0.1) + 5
    assert en.score("the Stanford men in San Jose", 0.1) > en.score(
        "the Stanford nien is d'an joal", 0.1
    )


def test_english_and_french_are_shipped_and_an_unknown_language_is_refused():
    """A job may name en or fr; any other name fails with the list of shipped ones."""
    assert {"en", "fr"} <= set(available_languages())
    with pytest.raises(ValueError, match="shipped: en, fr"):
        shipped_lexicon("xx")


def test_a_lexicon_file_round_trips(tmp_path):
    """``word<TAB>count`` lines, gzip, as the builder writes them."""
    path = tmp_path / "en.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for w, n in COUNTS.items():
            fh.write(f"{w}\t{n}\n")
    lex = Lexicon.load(path)
    assert lex.language == "en"
    assert lex.words == Lexicon("en", COUNTS).words


def test_the_processor_lifts_the_candidate_that_continues_a_word():
    """With "the" written, "n" (to "then") gains over "x", which leaves the lexicon; tokens
    outside the candidates and ruled-out tokens are left as they were."""
    tok = build_tokenizer()
    texts = token_texts(tok)
    lex = Lexicon("en", COUNTS)
    prior = WordPrior(lex, texts, eos=tok.eos_token_id, weight=1.0, floor=0.1, candidates=3)
    ids = torch.tensor([[tok.bos_token_id, *tok("the", add_special_tokens=False).input_ids]])
    n, x, z, q = (tok.convert_tokens_to_ids(c) for c in "nxzq")
    scores = torch.full((1, len(tok)), -math.inf)
    scores[0, [n, x, z]] = torch.tensor([-2.0, -1.0, -3.0])
    scores[0, q] = -9.0  # not among the 3 candidates
    out = prior(ids, scores.clone())
    assert out[0, n] - scores[0, n] == pytest.approx(lex.bonus("the", "n", 0.1), abs=1e-5)
    assert out[0, x] - scores[0, x] == pytest.approx(math.log(0.1), abs=1e-5)
    assert out[0, q] == -9.0
    assert torch.isinf(out[0, tok.convert_tokens_to_ids("a")])
    assert out[0, n] > out[0, x]


def test_the_current_word_starts_after_the_last_non_letter():
    """Only the letters since the last space (or digit, or quote) are the word so far."""
    tok = build_tokenizer()
    prior = WordPrior(Lexicon("en", COUNTS), token_texts(tok), eos=tok.eos_token_id, weight=1)
    ids = tok("Dear Sir, l'Étof", add_special_tokens=False).input_ids
    assert prior.current_word(ids) == "étof"
    assert prior.current_word(tok("12 ", add_special_tokens=False).input_ids) == ""


def test_the_recognizer_reads_through_the_prior_only_when_a_language_is_named(tmp_path):
    """A weighted lexicon changes what a (random, tiny) model reads with beams; "none" and
    weight 0 read as without it; an unknown language fails when the recognizer loads."""
    from PIL import Image, ImageDraw

    from worker.recognition.recognizer import Recognizer
    from worker.training.build import build_tiny_model

    torch.manual_seed(0)
    path = str(build_tiny_model(tmp_path / "tiny"))
    crops = []
    for text in ("hello world", "the end"):
        im = Image.new("L", (200, 30), 255)
        ImageDraw.Draw(im).text((4, 8), text, fill=0)
        crops.append(im)

    def read(weight: float, language: str | None = None, **kw) -> list[str]:
        rec = Recognizer.load(
            model=path, num_beams=3, max_new_tokens=30, language="en", word_weight=weight
        )
        return [r.text for r in rec(crops, language, **kw)]

    plain = read(0.0)
    assert read(50.0, "none") == plain
    assert read(50.0) != plain
    with pytest.raises(ValueError, match="no lexicon"):
        Recognizer.load(model=path, language="xx", word_weight=0.5)
