"""The training tools: tokenizer, synthetic lines, line fitting, metrics, model building."""

from __future__ import annotations

import itertools
import random

import pytest
from PIL import Image
from transformers import AutoProcessor, VisionEncoderDecoderModel

from worker.recognition.lineimage import fit_line
from worker.recognition.recognizer import LineResult
from worker.training.build import CHARSET, build_tiny_model, build_tokenizer
from worker.training.data import (
    collate,
    encode_label,
    read_column,
    read_lines_tsv,
    render_eval_set,
    render_eval_set_in_fonts,
    write_lines_tsv,
)
from worker.training.error_rates import cer, edit_distance, wer
from worker.training.evaluate import evaluate
from worker.training.synth import (
    HELD_OUT_FONTS,
    LineRenderer,
    TextSampler,
    load_fonts,
    sample_line,
    split_fonts,
)


def test_tokenizer_round_trips_every_character():
    """Each character of the charset is one token, and decoding restores the text exactly."""
    tok = build_tokenizer()
    text = "Dear Mrs. Müller, “£12.50” – paid 3/4 … ½ ß Ç"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert all(tok.convert_tokens_to_ids(c) != tok.unk_token_id for c in CHARSET)


def test_tokenizer_maps_unknown_characters_to_unk():
    """A character outside the charset becomes <unk> instead of being dropped."""
    tok = build_tokenizer()
    assert tok("a☃b", add_special_tokens=False).input_ids[1] == tok.unk_token_id


def test_labels_end_with_eos_and_pad_with_ignore_index():
    """Labels are characters plus </s>; shorter labels are padded with -100."""
    tok = build_tokenizer()
    a, b = encode_label(tok, "ab"), encode_label(tok, "abcd")
    assert a[-1] == tok.eos_token_id and len(a) == 3
    import torch

    batch = collate(
        [
            {"pixel_values": torch.zeros(1, 4, 8), "labels": a},
            {"pixel_values": torch.zeros(1, 4, 8), "labels": b},
        ]
    )
    assert batch["labels"].shape == (2, 5)
    assert batch["labels"][0, 3:].tolist() == [-100, -100]


def test_held_out_fonts_are_present_and_never_in_training_split():
    """Validation fonts exist in the bundle and the training split excludes all of them."""
    fonts = load_fonts()
    train, held = split_fonts(fonts)
    assert {f.name for f in held} == set(HELD_OUT_FONTS)
    assert not {f.name for f in train} & set(HELD_OUT_FONTS)
    assert len(train) >= 20


def test_synthetic_lines_only_use_glyphs_the_font_has():
    """Every sampled label is drawable by the font that rendered it, so labels never lie."""
    rng = random.Random(7)
    sampler, renderer = TextSampler(rng), LineRenderer(rng)
    fonts = load_fonts()
    for _ in range(30):
        font = rng.choice(fonts)
        im, text = sample_line(rng, sampler, renderer, [font], 40)
        assert 0 < len(text) <= 40
        assert all(c == " " or c in font.charset for c in text)
        assert im.mode == "L" and im.width > im.height


def test_sampler_is_reproducible_from_its_seed():
    """The same seed yields the same texts (fixed validation sets depend on it)."""
    a = TextSampler(random.Random(3))
    b = TextSampler(random.Random(3))
    assert [a(40) for _ in range(20)] == [b(40) for _ in range(20)]


def test_fit_line_keeps_aspect_and_pads_on_the_right():
    """A short line is scaled to the input height and padded with white, not stretched."""
    im = Image.new("L", (100, 50), 0)
    out = fit_line(im, height=32, width=384)
    assert out.size == (384, 32)
    px = out.load()
    assert px[300, 16] == 255  # padding
    square = fit_line(im, height=64, width=64)
    assert square.size == (64, 64)


def test_line_crops_are_trimmed_to_their_ink():
    """Paper margins go (a small margin stays); specks and blank crops change nothing."""
    from PIL import ImageDraw

    from worker.recognition.lineimage import prepare_line, trim_to_ink

    im = Image.new("L", (400, 120), 255)
    ImageDraw.Draw(im).rectangle((100, 40, 299, 79), fill=0)  # 200 x 40 of "ink"
    im.putpixel((5, 5), 0)  # a speck in the corner
    out = trim_to_ink(im)
    assert out.size == (200 + 2 * 5, 40 + 2 * 5)  # margin: 1/8 of the ink height
    blank = Image.new("L", (50, 20), 255)
    assert trim_to_ink(blank).size == (50, 20)
    prepared = prepare_line(im)
    assert prepare_line(prepared) is prepared  # prepared once, not again when fitted
    assert prepare_line(prepared.crop((0, 0, 50, 10))).size == (50, 10)  # pieces too
    # After trimming, the ink fills the model's input height instead of a third of it.
    fitted = fit_line(im, height=32, width=384)
    assert sum(1 for y in range(32) if fitted.getpixel((60, y)) < 128) > 20


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [("abc", "abc", 0), ("abc", "abd", 1), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3)],
)
def test_edit_distance(ref, hyp, expected):
    """Levenshtein distance on known pairs."""
    assert edit_distance(ref, hyp) == expected


def test_cer_and_wer_are_normalised_by_reference_length():
    """CER divides edits by reference characters; WER by reference words."""
    assert cer(["abcd", "ef"], ["abcd", "eg"]) == pytest.approx(1 / 6)
    assert wer(["the cat sat"], ["the hat sat"]) == pytest.approx(1 / 3)


def test_lines_tsv_round_trip(tmp_path):
    """A folder written by write_lines_tsv reads back with the same texts, quotes included."""
    from PIL import Image

    samples = [
        (Image.new("L", (40, 10), 255), 'He said "yes"'),
        (Image.new("L", (40, 10), 255), "a\\b"),
    ]
    write_lines_tsv(samples, tmp_path)
    pairs = read_lines_tsv(tmp_path)
    assert [t for _, t in pairs] == ['He said "yes"', "a\\b"]
    assert all(p.exists() for p, _ in pairs)
    with pytest.raises(ValueError, match="font"):
        read_column(tmp_path, "font")


def test_synthetic_sets_say_which_font_drew_each_line_without_changing_the_lines(tmp_path):
    """The font column is extra: the same seed renders the same images and texts with it."""
    import numpy as np

    fonts = split_fonts(load_fonts())[1]
    plain = render_eval_set(6, fonts, seed=7)
    with_fonts = render_eval_set_in_fonts(6, fonts, seed=7)
    for (im, text), (im2, text2, _) in zip(plain, with_fonts, strict=True):
        assert text == text2 and np.array_equal(np.asarray(im), np.asarray(im2))
    names = [f.name for _, _, f in with_fonts]
    write_lines_tsv(plain, tmp_path, fonts=names)
    assert read_column(tmp_path, "font") == names
    assert [t for _, t in read_lines_tsv(tmp_path)] == [t for _, t in plain]


def test_evaluate_reports_cer_by_group():
    line = Image.new("L", (120, 32), 255)
    line.paste(0, (10, 10, 110, 22))
    samples = [(line, "abcd"), (line, "abcd"), (line, "ab")]
    answers = [("abcd", 0.95), ("abxy", 0.5), ("ab", 0.9)]
    res = evaluate(_Answers(answers), samples, groups=["a", "a", "b"])  # type: ignore[arg-type]
    assert res.by_group == {"a": (2, pytest.approx(2 / 8)), "b": (1, 0.0)}
    assert evaluate(_Answers(answers), samples).by_group == {}  # type: ignore[arg-type]


def test_built_model_reloads_offline_as_a_standard_trocr_checkpoint(tmp_path):
    """The saved model loads with stock transformers classes and keeps its special token ids."""
    path = build_tiny_model(tmp_path / "tiny")
    model = VisionEncoderDecoderModel.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert model.config.decoder.model_type == "trocr"
    assert model.config.encoder.model_type == "vit"
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    assert model.config.pad_token_id == processor.tokenizer.pad_token_id
    assert (path / "model.safetensors").exists()


class _Answers:
    """Stands in for a recognizer: returns fixed answers in order (no line here is split)."""

    width, height = 384, 32

    def __init__(self, answers: list[tuple[str, float]]) -> None:
        self.answers = answers

    def __call__(self, pieces):  # type: ignore[no-untyped-def]
        assert len(pieces) == len(self.answers)
        return [LineResult(text=t, confidence=c) for t, c in self.answers]


def test_evaluate_reports_what_the_review_threshold_catches():
    line = Image.new("L", (120, 32), 255)
    line.paste(0, (10, 10, 110, 22))  # some ink, so trimming keeps a line
    samples = [(line, "abcd")] * 4
    answers = [("abcd", 0.95), ("abcd", 0.92), ("abxd", 0.5), ("abcd", 0.6)]
    res = evaluate(_Answers(answers), samples, review_below=0.9)  # type: ignore[arg-type]
    assert res.cer == pytest.approx(1 / 16)
    assert res.conf_exact == pytest.approx((0.95 + 0.92 + 0.6) / 3)
    assert res.conf_wrong == pytest.approx(0.5)
    assert res.low_conf_cer == pytest.approx(0.25)  # the lowest 10% is the one wrong line
    assert res.flagged == pytest.approx(0.5)  # 0.5 and 0.6 are below 0.9
    assert res.flagged_wrong == pytest.approx(0.5)
    assert res.unflagged_cer == 0


def test_review_sweep_reports_each_threshold():
    """A sweep gives, for each threshold, the share flagged, how many of those are wrong and
    the CER of the rest, as the single threshold does (to choose HTRQ_REVIEW_BELOW)."""
    line = Image.new("L", (120, 32), 255)
    line.paste(0, (10, 10, 110, 22))
    samples = [(line, "abcd")] * 4
    answers = [("abcd", 0.95), ("abcd", 0.92), ("abxd", 0.5), ("abcd", 0.6)]
    res = evaluate(_Answers(answers), samples, sweep=[0.55, 0.93])  # type: ignore[arg-type]
    assert res.review_sweep[0] == (0.55, 0.25, 1.0, 0.0)  # only the wrong line is flagged
    below, flagged, wrong, rest = res.review_sweep[1]  # three lines below 0.93, one wrong
    assert (below, flagged, rest) == (0.93, 0.75, 0.0) and wrong == pytest.approx(1 / 3)
    assert evaluate(_Answers(answers), samples).review_sweep == []  # type: ignore[arg-type]


def test_caps_only_fonts_get_upper_case_labels():
    """Fonts that draw lowercase as capitals train on upper-cased labels, never mixed case."""
    caps = [f for f in load_fonts() if f.caps_only]
    assert caps, "the bundle's caps-only fonts are missing"
    assert not {f.name for f in caps} & set(HELD_OUT_FONTS)
    rng = random.Random(11)
    sampler, renderer = TextSampler(rng), LineRenderer(rng)
    texts = [sample_line(rng, sampler, renderer, [rng.choice(caps)], 40)[1] for _ in range(30)]
    assert all(t == t.upper() for t in texts)
    assert any(c.isalpha() for t in texts for c in t)


def test_distortion_bends_strokes_but_keeps_the_ink():
    """Training lines' letterforms move a little; the amount of ink stays about the same."""
    import numpy as np
    from PIL import ImageDraw

    mask = Image.new("L", (400, 90), 0)
    ImageDraw.Draw(mask).text((20, 20), "handwriting", fill=255, font_size=40)
    before = np.asarray(mask) > 127
    moved = 0
    for seed in range(20):
        renderer = LineRenderer(random.Random(seed), distort=True)
        after = np.asarray(renderer._distort(mask, 40)) > 127
        assert 0.5 < after.sum() / before.sum() < 2.0
        moved += (after != before).any()
    assert moved >= 12  # about 3 lines in 4 are bent (70%) or get another pen (30%)
    assert LineRenderer(random.Random(0), clean=True, distort=True).distort is False


def test_letter_by_letter_variation_changes_each_letter_but_keeps_them_all():
    """Training lines may vary each letter on its own: every letter is still drawn, the
    word keeps about its length, the shapes differ from the font's, and a seed repeats."""
    import numpy as np
    from PIL import ImageDraw, ImageFont

    font = next(f for f in load_fonts() if f.name == "caveat/caveat-latin-400-normal.woff")
    f = ImageFont.truetype(str(font.path), 40)
    word, x0 = "minimum", 30.0
    plain = Image.new("L", (400, 88), 0)
    ImageDraw.Draw(plain).text((x0, 20), word, font=f, fill=255)
    plain_ink = np.asarray(plain) > 127

    def draw(seed: int) -> tuple[np.ndarray, float]:
        mask = Image.new("L", (400, 88), 0)
        end = LineRenderer(random.Random(seed), distort=True)._draw_glyphs(
            mask, word, x0, 20, f, 40, 0.0, 0
        )
        return np.asarray(mask) > 127, end

    length = f.getlength(word)
    for seed in range(10):
        ink, end = draw(seed)
        assert 0.6 * length < end - x0 < 1.3 * length
        assert 0.5 < ink.sum() / plain_ink.sum() < 1.6
        assert (ink != plain_ink).sum() > 0.1 * plain_ink.sum()  # not the font's own shapes
        # Ink under each eighth of the word: no letter lost.
        cols = np.flatnonzero(ink.any(axis=0))
        span = np.linspace(cols[0], cols[-1], 9)
        assert all(ink[:, int(a) : int(b) + 1].any() for a, b in itertools.pairwise(span))
        again, end_again = draw(seed)
        assert (again == ink).all() and end_again == end
