from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from PIL import Image, ImageDraw

from htrq.errors import PageError
from tests.images import corrupt_png, page_png
from worker.recognition.pipeline import LineOutput, PageInput, PageOutput, Pipeline, page_confidence
from worker.recognition.reading import LineReader, line_reader
from worker.recognition.recognizer import Recognizer
from worker.segmentation import LineBox


@dataclass(frozen=True)
class Result:
    text: str
    confidence: float


class CountingRecognizer:
    """Records each call; reads a crop as its width so results can be traced back."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, crops: Sequence[Image.Image]) -> list[Result]:
        self.calls.append(len(crops))
        return [Result(text=f"w{c.width}", confidence=0.5) for c in crops]


class TwoLines:
    """Splits every page into a top and a bottom half."""

    def __call__(self, page: Image.Image) -> list[LineBox]:
        w, h = page.size
        return [LineBox(bbox=(0, 0, w, h // 2)), LineBox(bbox=(0, h // 2, w // 2, h))]


def _two_strokes(w: int) -> bytes:
    im = Image.new("L", (w, 40), 255)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 3, w - 1, 16), fill=0)
    draw.rectangle((0, 23, w // 2 - 1, 36), fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_all_lines_of_all_pages_go_to_the_recognizer_in_one_call() -> None:
    """A group of pages costs one recognizer call, and results map back to their pages."""
    rec = CountingRecognizer()
    pipe = Pipeline(read=LineReader(rec, max_aspect=12.0), segmenter=TwoLines(), line_margin=0)
    # Each half holds a stroke as wide as the half: trimming keeps the width, which traces it.
    pages = [PageInput(key=i, data=_two_strokes(100 + 20 * i)) for i in range(3)]
    out = pipe(pages)
    assert rec.calls == [6]
    for i in range(3):
        page = out[i]
        assert isinstance(page, PageOutput)
        w = 100 + 20 * i
        assert page.text == f"w{w}\nw{w // 2}"
        assert [ln.bbox for ln in page.lines] == [(0, 0, w, 20), (0, 20, w // 2, 40)]


def test_a_corrupt_page_fails_alone() -> None:
    """A page that cannot be decoded gets its PageError; the others of the group succeed."""
    rec = CountingRecognizer()
    pages = [
        PageInput(key="a", data=page_png()),
        PageInput(key="bad", data=corrupt_png()),
        PageInput(key="b", data=page_png()),
    ]
    out = Pipeline(read=LineReader(rec, max_aspect=12.0))(pages)
    assert isinstance(out["bad"], PageError) and out["bad"].code == "invalid_image"
    assert isinstance(out["a"], PageOutput) and isinstance(out["b"], PageOutput)
    assert rec.calls == [2]


def test_an_oversized_page_fails_with_too_large() -> None:
    """The pixel limit refuses a page with the too_large code."""
    out = Pipeline(read=LineReader(CountingRecognizer(), max_aspect=12.0), max_pixels=1000)(
        [PageInput("p", page_png())]
    )
    assert isinstance(out["p"], PageError) and out["p"].code == "too_large"


def test_line_mode_reads_the_image_as_one_line() -> None:
    """mode=line bypasses the page segmenter."""
    out = Pipeline(read=LineReader(CountingRecognizer(), max_aspect=12.0), segmenter=TwoLines())(
        [PageInput("p", page_png(), mode="line")]
    )
    assert isinstance(out["p"], PageOutput) and len(out["p"].lines) == 1


@pytest.mark.parametrize("mode", ["page", "line"])
def test_a_blank_page_succeeds_with_no_text(mode: str) -> None:
    """A single-tone page (the back of a sheet) is a page without text, not a failure, and
    nothing of it goes to the recognizer, which would only invent text."""
    rec = CountingRecognizer()
    buf = io.BytesIO()
    Image.new("L", (600, 800), 250).save(buf, "PNG")
    out = Pipeline(read=LineReader(rec, max_aspect=12.0), segmenter=TwoLines())(
        [PageInput("blank", buf.getvalue(), mode=mode), PageInput("p", page_png(), mode=mode)]
    )
    blank = out["blank"]
    assert isinstance(blank, PageOutput)
    assert blank.lines == [] and blank.text == "" and blank.confidence is None
    assert blank.size == (600, 800)
    assert rec.calls == [2 if mode == "page" else 1]  # only the other page's lines


def test_page_confidence_is_the_character_weighted_mean() -> None:
    """Long lines weigh more than short ones; empty lines count once; no lines gives None."""
    lines = [LineOutput("abc", 0.9, (0, 0, 1, 1)), LineOutput("a", 0.1, (0, 0, 1, 1))]
    assert page_confidence(lines) == pytest.approx((3 * 0.9 + 0.1) / 4)
    assert page_confidence([LineOutput("", 0.4, (0, 0, 1, 1))]) == pytest.approx(0.4)
    assert page_confidence([]) is None


def test_the_tiny_model_reads_pages_end_to_end(recognizer: Recognizer) -> None:
    """With a real (tiny) recognizer every page gets text and a confidence in 0..1."""
    out = Pipeline(read=line_reader(recognizer))([PageInput(i, page_png()) for i in range(3)])
    for page in out.values():
        assert isinstance(page, PageOutput)
        assert page.confidence is not None and 0 <= page.confidence <= 1
        assert len(page.lines) == 1


class SpeakingRecognizer:
    """Records the language of each call; reads a crop as its width and that language."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None]] = []

    def __call__(self, crops: Sequence[Image.Image], language: str | None = None) -> list[Result]:
        self.calls.append((len(crops), language))
        return [Result(text=f"w{c.width}{language or ''}", confidence=0.5) for c in crops]


def test_pages_of_one_language_are_read_together_and_each_in_its_own() -> None:
    """A group of one language is one call with it; a mixed group one call per language,
    each line back on its page; a page of no language is read without one."""
    rec = SpeakingRecognizer()
    pipe = Pipeline(read=LineReader(rec, max_aspect=12.0), segmenter=TwoLines(), line_margin=0)
    same = [PageInput(key=i, data=_two_strokes(100), language="en") for i in range(2)]
    pipe(same)
    assert rec.calls == [(4, "en")]
    rec.calls.clear()
    langs = ["fr", None, "fr", "en"]
    mixed = [PageInput(key=i, data=_two_strokes(100), language=x) for i, x in enumerate(langs)]
    out = pipe(mixed)
    assert sorted(rec.calls, key=str) == sorted([(4, "fr"), (2, None), (2, "en")], key=str)
    for i, lang in enumerate(langs):
        page = out[i]
        assert isinstance(page, PageOutput)
        assert page.text == f"w100{lang or ''}\nw50{lang or ''}"


def test_provenance_says_which_language_steered_the_reading() -> None:
    """A page read in a language records it and the weight; none, or weight 0, says none."""
    from htrq.jobs.claims import ReadBy

    base = ReadBy("abc", {"num_beams": 4}, "0.1.0")
    assert base.in_language("fr", 0.3).decoding == {
        "num_beams": 4,
        "language": "fr",
        "word_weight": 0.3,
    }
    for language, weight in ((None, 0.3), ("none", 0.3), ("fr", 0.0)):
        assert base.in_language(language, weight).decoding["language"] == "none"
        assert base.in_language(language, weight).decoding["word_weight"] == 0.0
