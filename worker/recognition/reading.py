"""The reading path, built in one place: line crops in, text and confidence per line out.

Every line, whoever reads it (the worker, ``htrq transcribe``, ``htrq eval``, the
benchmarks), goes through the same steps: trimmed to its ink, split into overlapping pieces
when it is wider than the model can take, the pieces recognised together with every other
line's, their texts re-joined. How wide is too wide depends on the model's input shape, so
the reader is made from the loaded recognizer (:func:`line_reader`) and the page pipeline
from settings and that recognizer
(:func:`worker.recognition.pipeline.build_pipeline`); nothing else assembles them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from PIL import Image

from htrq.text import clean_line_text
from worker.recognition.alignment import WordBox, word_boxes
from worker.recognition.lineimage import TRIM_KEY, prepare_line, split_aspect
from worker.recognition.splitting import PIECE_X_KEY, join_all, join_map, split_all

log = logging.getLogger(__name__)

_SPACES = re.compile(" {2,}")

if TYPE_CHECKING:
    from worker.recognition.recognizer import Recognizer


class Recognized(Protocol):
    # Read-only members, so that frozen dataclasses (``LineResult``) match.
    @property
    def text(self) -> str: ...
    @property
    def confidence(self) -> float: ...


#: The recognizer seen from here: crops in, one result per crop out, in order.
#: A recognizer may take a language as its second argument (``Recognizer`` does). A result
#: may also carry ``logps`` and ``spans`` per character (``recognizer.LineResult``): then the
#: line's words get their confidences and boxes from them.
Recognize = Callable[..., Sequence[Recognized]]


class ReadLine(NamedTuple):
    text: str
    confidence: float
    #: The line's words on the crop given (pixels); a word's box is None where nothing placed
    #: it (the recognizer gave no alignment). Empty for a line without words.
    words: tuple[WordBox, ...] = ()


#: What the page pipeline calls: line crops in, a :class:`ReadLine` per crop out (None for a
#: line the recognizer failed on while it read the others); a language may follow the crops
#: (``LineReader`` takes one).
ReadLines = Callable[..., list[ReadLine | None]]


@dataclass(frozen=True)
class LineReader:
    """``reader(crops) -> [(text, confidence), ...]``, one per crop, in order.

    When the recognizer raises on the group's pieces, they are read again in halves, and the
    halves of the half that fails, so that a piece that breaks the model on its own is found
    in a few calls and only its line comes back as None; the others are read. When every
    piece fails alone too, the recognizer itself is broken: the first error is raised.
    """

    recognize: Recognize
    #: Crops wider than this many heights are read in overlapping pieces; None reads every
    #: line whole (models with a square input stretch any line into it anyway).
    max_aspect: float | None

    def __call__(
        self, crops: Sequence[Image.Image], language: str | None = None
    ) -> list[ReadLine | None]:
        """``language`` names the lexicon that steers the reading (None: the recognizer's
        default; "none": no lexicon); recognizers without one ignore it."""
        if not crops:
            return []
        # Trimmed before splitting, so that a line's width is measured against its ink height.
        prepared = [prepare_line(c) for c in crops]
        pieces, counts = split_all(prepared, max_aspect=self.max_aspect)
        try:
            results: list[Recognized | None] = list(self._recognize(pieces, language))
        except Exception:
            if len(pieces) == 1:
                raise
            mid = len(pieces) // 2
            results = self._halves(pieces[:mid], language) + self._halves(pieces[mid:], language)
            if all(r is None for r in results):
                raise
            log.warning(
                "the recognizer failed on %d of %d pieces; their lines are left unread",
                sum(r is None for r in results),
                len(results),
            )
        out: list[ReadLine | None] = []
        start = 0
        for line, n in zip(prepared, counts, strict=True):
            part = results[start : start + n]
            piece_x = [p.info.get(PIECE_X_KEY, 0) for p in pieces[start : start + n]]
            start += n
            if any(r is None for r in part):
                out.append(None)
                continue
            read = [r for r in part if r is not None]
            flat = [
                (clean_line_text(r.text), min(1.0, max(0.0, float(r.confidence)))) for r in read
            ]
            text, conf = join_all(flat, [n])[0]
            # One space between words, so that the words joined by single spaces are the text.
            text = _SPACES.sub(" ", text)
            out.append(ReadLine(text, conf, _words(text, conf, read, piece_x, line)))
        return out

    def _recognize(
        self, pieces: Sequence[Image.Image], language: str | None
    ) -> Sequence[Recognized]:
        # Only a recognizer that knows languages is told one (test doubles and plain
        # callables take the crops alone).
        results = self.recognize(pieces, language) if language else self.recognize(pieces)
        if len(results) != len(pieces):
            raise RuntimeError(
                f"recognizer returned {len(results)} results for {len(pieces)} pieces"
            )
        return results

    def _halves(
        self, pieces: Sequence[Image.Image], language: str | None
    ) -> list[Recognized | None]:
        try:
            return list(self._recognize(pieces, language))
        except Exception:
            if len(pieces) == 1:
                log.debug("a piece broke the recognizer", exc_info=True)
                return [None]
            mid = len(pieces) // 2
            return self._halves(pieces[:mid], language) + self._halves(pieces[mid:], language)


def _words(
    text: str, conf: float, read: Sequence[Recognized], piece_x: Sequence[int], line: Image.Image
) -> tuple[WordBox, ...]:
    """The words of ``text`` (the pieces of ``read`` re-joined) on the crop ``line`` was
    prepared from: each character's log-probability and x range follow it through the join
    (a piece's ranges shifted by where it starts), then ``alignment.word_boxes``."""
    texts = [r.text for r in read]
    joined, where = join_map(texts)
    keep = [i for i, ch in enumerate(joined) if not (ch == " " and i and joined[i - 1] == " ")]
    joined, where = "".join(joined[i] for i in keep), [where[i] for i in keep]
    logps_of = [getattr(r, "logps", None) for r in read]
    spans_of = [getattr(r, "spans", None) for r in read]
    ctc_of = [getattr(r, "ctc_logps", None) for r in read]
    clean = all(clean_line_text(t) == t for t in texts) and joined == text
    logps: list[float] | None = [] if clean and all(x is not None for x in logps_of) else None
    spans: list[tuple[float, float]] | None = (
        [] if logps is not None and all(x is not None for x in spans_of) else None
    )
    ctc: list[float] | None = [] if spans is not None and None not in ctc_of else None
    last = (0.0, 0.0)
    for src in where:
        if src is None:  # the space put between two pieces
            if logps is not None:
                logps.append(0.0)
            if spans is not None:
                spans.append(last)
            if ctc is not None:
                ctc.append(0.0)
            continue
        p, i = src
        if ctc is not None:
            ctc.append(ctc_of[p][i])  # type: ignore[index]
        if logps is not None:
            logps.append(logps_of[p][i])  # type: ignore[index]
        if spans is not None:
            a, b = spans_of[p][i]  # type: ignore[index]
            last = (a + piece_x[p], b + piece_x[p])
            spans.append(last)
    words = word_boxes(text, logps, spans, line, conf, ctc)
    ox, oy = line.info.get(TRIM_KEY, (0, 0))
    return tuple(
        dataclasses.replace(w, box=(w.box[0] + ox, w.box[1] + oy, w.box[2] + ox, w.box[3] + oy))
        if w.box is not None
        else w
        for w in words
    )


def line_reader(recognizer: Recognizer) -> LineReader:
    """The reader for a loaded recognizer: split where its input shape says."""
    return LineReader(recognizer, split_aspect(recognizer.width, recognizer.height))


class CannotRead(RuntimeError):
    """The model loaded but fails to read a line: a worker with it must not take pages."""


def check_reads(reader: ReadLines) -> None:
    """Read one small generated line, or raise :class:`CannotRead` saying why.

    A model that loads but cannot read (an image size its processor and encoder disagree on,
    a broken tokenizer, a dtype the device lacks) would otherwise fail every page it claims
    with ``model_error`` until their attempts run out.
    """
    from PIL import ImageDraw

    line = Image.new("L", (160, 24), 255)
    ImageDraw.Draw(line).text((4, 6), "htrq reads this line", fill=0)
    try:
        (read,) = reader([line])
    except Exception as exc:
        raise CannotRead(f"{type(exc).__name__}: {exc}") from exc
    if read is None or not isinstance(read[0], str):
        raise CannotRead(f"the reader returned {read!r} for a line")
