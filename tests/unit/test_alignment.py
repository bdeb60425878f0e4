"""Words: CTC forced alignment, word boxes on a line, served words (estimated, re-fitted)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from htrq.words import estimate_words, refit_words, served_words
from worker.recognition.alignment import ctc_align, word_boxes
from worker.recognition.splitting import join_map, join_pieces

BLANK = 0


def posteriors(frames: list[int], vocab: int = 6, sharp: float = 8.0) -> np.ndarray:
    """Log-probabilities that put most mass on the label given for each frame."""
    logits = np.zeros((len(frames), vocab))
    logits[np.arange(len(frames)), frames] = sharp
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def test_alignment_finds_each_token_where_it_fires_in_order() -> None:
    """Each token's frames are where its posterior peaks, in order, within the frames."""
    frames = [0, 1, 1, 0, 2, 0, 0, 3, 0, 3, 0]  # the repeated 3 needs the blank between
    spans = ctc_align(posteriors(frames), [1, 2, 3, 3], BLANK)
    assert spans == [(1, 2), (4, 4), (7, 7), (9, 9)]


def test_alignment_is_monotonic_and_in_bounds_on_noise() -> None:
    """On random posteriors the path still visits every token once, left to right."""
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(6), size=40))
    tokens = [1, 2, 2, 5, 4, 1, 3]
    spans = ctc_align(logp, tokens, BLANK)
    assert spans is not None and len(spans) == len(tokens)
    for (a, b), (c, _) in itertools.pairwise(spans):
        assert 0 <= a <= b < c < 40


def test_alignment_of_a_long_line() -> None:
    """Hundreds of states (a line of 90 letters) align as few do."""
    tokens = [1 + i % 5 for i in range(90)]
    frames = [t for tok in tokens for t in (tok, 0)] + [0] * 10
    spans = ctc_align(posteriors(frames), tokens, BLANK)
    assert spans == [(2 * k, 2 * k) for k in range(90)]


def test_alignment_refuses_text_longer_than_the_frames() -> None:
    """No path: more letters (and blanks between repeats) than frames."""
    assert ctc_align(posteriors([1, 2, 3]), [1, 2, 3, 4], BLANK) is None
    assert ctc_align(posteriors([1, 1, 1]), [1, 1, 1], BLANK) is None
    assert ctc_align(posteriors([1]), [], BLANK) == []


def line_image() -> tuple[Image.Image, list[tuple[int, int]]]:
    """Three ink blocks as three words, and their true x ranges."""
    im = Image.new("L", (300, 40), 255)
    draw = ImageDraw.Draw(im)
    truth = [(10, 60), (90, 170), (200, 290)]
    for x0, x1 in truth:
        draw.rectangle((x0, 10, x1 - 1, 30), fill=0)
    return im, truth


def test_word_boxes_take_the_ink_between_the_gaps() -> None:
    """Letters placed roughly inside their words give boxes on the words' ink."""
    im, truth = line_image()
    text = "ab cde fg"
    # Rough letter positions, as CTC gives them: a column or two somewhere in each letter.
    spans = [(20, 24), (40, 44), (0, 0), (100, 104), (120, 124), (150, 154), (0, 0), (220, 224),
             (260, 264)]  # fmt: skip
    words = word_boxes(text, [-0.1] * len(text), spans, im, 0.5)
    assert [w.text for w in words] == ["ab", "cde", "fg"]
    assert [w.box for w in words] == [(x0, 10, x1, 31) for x0, x1 in truth]
    assert all(abs(w.confidence - np.exp(-0.1)) < 1e-9 for w in words)
    assert " ".join(w.text for w in words) == " ".join(text.split())


def test_word_boxes_without_an_alignment_have_none() -> None:
    """No spans: words and confidences, no boxes (the pipeline estimates them)."""
    words = word_boxes("a  b", None, None, None, 0.4)
    assert [(w.text, w.box, w.confidence) for w in words] == [("a", None, 0.4), ("b", None, 0.4)]


def test_join_map_follows_each_character_through_the_join() -> None:
    """The joined text is join_pieces', and each character points at where it came from."""
    texts = ["the quick brown fo", " brown fox jumps"]
    joined, where = join_map(texts)
    assert joined == join_pieces(texts) == "the quick brown fox jumps"
    assert all(joined[k] == texts[p][i] for k, (p, i) in enumerate(where))  # type: ignore[misc]
    joined, where = join_map(["one", "two"])
    assert joined == "one two" and where[3] is None


def test_estimated_words_split_the_box_by_characters() -> None:
    """Estimated words cover the box in order, joined they give the text."""
    words = estimate_words("ab cd", [0, 5, 50, 25], 0.7)
    assert words == [
        {"text": "ab", "box": [0, 5, 20, 25], "confidence": 0.7},
        {"text": "cd", "box": [30, 5, 50, 25], "confidence": 0.7},
    ]


def test_a_correction_keeps_the_boxes_of_words_it_did_not_change() -> None:
    """Unchanged words keep their boxes; a changed run shares the span it replaced."""
    words = [
        {"text": "Dear", "box": [10, 0, 50, 20], "confidence": 0.9},
        {"text": "Sri", "box": [60, 2, 90, 22], "confidence": 0.3},
        {"text": "Smith", "box": [100, 0, 160, 20], "confidence": 0.8},
    ]
    out = refit_words(words, "Dear Sir John Smith", [0, 0, 200, 30])  # type: ignore[arg-type]
    assert [w["text"] for w in out] == ["Dear", "Sir", "John", "Smith"]
    assert out[0] == words[0] and out[3] == words[2]
    assert out[1]["box"][0] == 60 and out[2]["box"][2] == 90
    assert out[1]["box"][2] <= out[2]["box"][0]
    assert out[1]["confidence"] == out[2]["confidence"] == 1.0


def test_served_words_of_old_rows_are_estimated() -> None:
    """A line stored before words were gets estimated words; stored words are kept."""
    words, source = served_words(
        model_text="a b", correction=None, words=None, box_source=None, bbox=[0, 0, 30, 10],
        confidence=0.5,
    )  # fmt: skip
    assert source == "estimate" and [w["text"] for w in words] == ["a", "b"]
    stored = '[{"text": "a", "box": [0, 0, 9, 10], "confidence": 0.5}]'
    words, source = served_words(
        model_text="a", correction="a b", words=stored, box_source="ctc", bbox=[0, 0, 30, 10],
        confidence=0.5,
    )  # fmt: skip
    assert source == "ctc" and [w["text"] for w in words] == ["a", "b"]
    assert words[0]["box"] == [0, 0, 9, 10]


def test_the_builtin_model_places_each_word_it_reads_on_its_ink() -> None:
    """A clean line in a held-out font: every word read has a box inside the crop, in
    reading order, over that word's ink; the words joined give the line's text."""
    import random

    from worker.recognition.reading import line_reader
    from worker.recognition.recognizer import Recognizer
    from worker.training.synth import LineRenderer, load_fonts, split_fonts

    _, held_out = split_fonts(load_fonts())
    renderer = LineRenderer(random.Random(3), clean=True)
    boxes: list[tuple[float, float, float, float]] = []
    im = renderer("the quick brown fox", held_out[0], word_boxes=boxes)
    (read,) = line_reader(Recognizer.load(model="builtin", num_beams=1))([im])
    assert read is not None
    assert " ".join(w.text for w in read.words) == read.text
    placed = [w.box for w in read.words]
    assert all(b is not None for b in placed)
    for (x0, y0, x1, y1), (a0, _, a1, _) in itertools.pairwise(placed):  # type: ignore[misc]
        assert 0 <= x0 < x1 <= a0 < a1 <= im.width and 0 <= y0 < y1 <= im.height
    if read.text == "the quick brown fox":
        for box, truth in zip(placed, boxes, strict=True):
            assert abs(box[0] - truth[0]) <= 4 and abs(box[2] - truth[2]) <= 4  # type: ignore[index]


def test_the_pipeline_gives_words_the_database_can_store() -> None:
    """Through the page pipeline (a line page, as mode=line): words in page pixels inside
    the line's box, plain ints and floats (stored as JSON), box_source ctc."""
    import io
    import json
    import random

    from worker.recognition.pipeline import PageInput, PageOutput, Pipeline
    from worker.recognition.reading import line_reader
    from worker.recognition.recognizer import Recognizer
    from worker.training.synth import LineRenderer, load_fonts, split_fonts

    _, held_out = split_fonts(load_fonts())
    im = LineRenderer(random.Random(5))("yours truly", held_out[1])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    read = line_reader(Recognizer.load(model="builtin", num_beams=1))
    out = Pipeline(read=read)([PageInput("p", buf.getvalue(), mode="line")])["p"]
    assert isinstance(out, PageOutput)
    (line,) = out.lines
    assert line.box_source == "ctc" and line.words
    assert json.loads(json.dumps(line.words)) == line.words
    x0, y0, x1, y1 = line.bbox
    for w in line.words:
        assert all(type(v) is int for v in w["box"]) and type(w["confidence"]) is float
        assert x0 <= w["box"][0] <= w["box"][2] <= x1 and y0 <= w["box"][1] <= w["box"][3] <= y1


def test_word_boxes_off_reads_the_same_text_with_estimated_boxes() -> None:
    """HTRQ_WORD_BOXES=false: the same reading, its words' boxes split from the line's box by
    character counts (box_source estimate), the words' own confidences kept."""
    import io
    import random

    from worker.recognition.pipeline import PageInput, PageOutput, Pipeline
    from worker.recognition.reading import line_reader
    from worker.recognition.recognizer import Recognizer
    from worker.training.synth import LineRenderer, load_fonts, split_fonts

    _, held_out = split_fonts(load_fonts())
    buf = io.BytesIO()
    LineRenderer(random.Random(7))("send it by post", held_out[2]).save(buf, "PNG")
    lines = {}
    for boxes in (True, False):
        read = line_reader(Recognizer.load(model="builtin", num_beams=1, word_boxes=boxes))
        out = Pipeline(read=read)([PageInput("p", buf.getvalue(), mode="line")])["p"]
        assert isinstance(out, PageOutput)
        (lines[boxes],) = out.lines
    aligned, estimated = lines[True], lines[False]
    assert aligned.box_source == "ctc" and estimated.box_source == "estimate"
    assert estimated.text == aligned.text and estimated.words
    assert [w["text"] for w in estimated.words] == aligned.text.split()
    assert [w["confidence"] for w in estimated.words] == [
        w["confidence"] for w in aligned.words or []
    ]
    x0, _, x1, _ = estimated.bbox
    assert estimated.words[0]["box"][0] == x0 and estimated.words[-1]["box"][2] == x1


def test_the_reader_keeps_one_space_between_words_and_their_boxes() -> None:
    """A reading with a doubled space is stored with one, and its words still get the boxes
    its letters' spans give (shifted by where the line was trimmed)."""
    from dataclasses import dataclass

    from worker.recognition.reading import LineReader

    @dataclass(frozen=True)
    class Result:
        text: str
        confidence: float
        logps: tuple[float, ...]
        spans: tuple[tuple[float, float], ...]

    im, _ = line_image()
    text = "ab  cd"
    spans = ((5, 9), (30, 34), (0, 0), (0, 0), (85, 89), (140, 144))

    def recognize(crops: list[Image.Image]) -> list[Result]:
        return [Result(text, 0.8, (-0.2,) * len(text), spans) for _ in crops]

    (read,) = LineReader(recognize, max_aspect=None)([im])
    assert read is not None and read.text == "ab cd"
    assert [w.text for w in read.words] == ["ab", "cd"]
    assert all(w.box is not None for w in read.words)


def test_a_failed_alignment_leaves_the_reading_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Word boxes are worth less than the text: a line whose alignment raises is read as
    without it, and its words are estimated."""
    import io

    import worker.recognition.recognizer as recognizer_module
    from worker.recognition.pipeline import PageInput, PageOutput, Pipeline
    from worker.recognition.reading import line_reader
    from worker.recognition.recognizer import Recognizer

    def broken(*_: object) -> None:
        raise ValueError("no alignment today")

    monkeypatch.setattr(recognizer_module, "ctc_align", broken)
    im = Image.new("L", (240, 40), 255)
    ImageDraw.Draw(im).text((6, 12), "two words", fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    read = line_reader(Recognizer.load(model="builtin", num_beams=1))
    out = Pipeline(read=read)([PageInput("p", buf.getvalue(), mode="line")])["p"]
    assert isinstance(out, PageOutput)
    (line,) = out.lines
    assert line.box_source == "estimate"
    assert " ".join(w["text"] for w in line.words or []) == line.text


def test_word_boxes_are_clipped_to_the_lines_outline() -> None:
    """A word's top and bottom stay within the outline over its columns."""
    from worker.segmentation.crops import clip_to_outline

    outline = [(0, 10), (100, 20), (100, 40), (0, 30)]  # a slanted band
    assert clip_to_outline([10, 0, 30, 50], outline) == [10, 11, 30, 33]
    assert clip_to_outline([10, 0, 30, 50], None) == [10, 0, 30, 50]
    assert clip_to_outline([10, 12, 30, 20], outline) == [10, 12, 30, 20]
