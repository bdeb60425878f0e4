"""Page images in, page results out. Pure: no Celery, no database, no storage.

All line crops of all pages in a group go to the recognizer in one call, which sorts them by
width and batches them, so that a group of short pages fills the batches as well as a long one.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from htrq.errors import PageError, public_message
from htrq.inputs import DEFAULT_MAX_ASPECT, is_pdf, render_stored_page
from htrq.words import Word, estimate_words
from worker.recognition.reading import ReadLine, ReadLines, line_reader
from worker.recognition.render import render_pdf_limited
from worker.segmentation import LineBox, Segmenter, WholeImageSegmenter, make_segmenter
from worker.segmentation.crops import (
    box_to_source,
    clip_to_outline,
    crop_box,
    crop_lines,
    to_source_frame,
)
from worker.segmentation.preprocess import BLANK_INFO_KEY, SKEW_INFO_KEY, normalise_page

if TYPE_CHECKING:
    from htrq.settings import Settings
    from worker.recognition.recognizer import Recognizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageInput:
    key: Hashable  #: the caller's handle for the page (a page id), returned untouched
    data: bytes  #: the stored upload
    frame: int = 0  #: which page of the upload
    mode: str = "page"  #: ``page``: segment into lines; ``line``: the image is one line
    #: Whose lexicon steers the reading (``none`` or None: the glyphs alone).
    language: str | None = None


@dataclass(frozen=True)
class LineOutput:
    text: str
    confidence: float
    bbox: tuple[int, int, int, int]
    polygon: list[tuple[int, int]] | None = None
    baseline: list[tuple[int, int]] | None = None
    #: ``[{"text", "box", "confidence"}, ...]`` in page pixels (``htrq.words``).
    words: list[Word] | None = None
    #: ``ctc``: the boxes come from the model's alignment; ``estimate``: from character counts.
    box_source: str | None = None


@dataclass(frozen=True)
class PageOutput:
    text: str
    confidence: float | None  #: None when the page has no lines
    lines: list[LineOutput] = field(default_factory=list)
    size: tuple[int, int] | None = None  #: width, height of the page image the boxes refer to


def page_confidence(lines: Sequence[LineOutput]) -> float | None:
    """Character-weighted mean of line confidences.

    Each line weighs at least 1 so that an empty line still counts and an all-empty page does
    not divide by zero.
    """
    if not lines:
        return None
    weights = [max(1, len(ln.text)) for ln in lines]
    return sum(w * ln.confidence for w, ln in zip(weights, lines, strict=True)) / sum(weights)


class Pipeline:
    """Decode, normalise, segment and crop each page, then recognise every crop together."""

    def __init__(
        self,
        *,
        read: ReadLines,
        segmenter: Segmenter | None = None,
        max_pixels: int = 60_000_000,
        max_aspect: float = DEFAULT_MAX_ASPECT,
        max_lines: int = 1000,
        pdf_dpi: int = 300,
        pdf_render_seconds: float | None = 30.0,
        line_margin: int = 4,
    ) -> None:
        #: Reads every line crop of the group in one call (``worker.recognition.reading``).
        self.read = read
        #: Used for ``mode=page``; the next issue swaps in a real page segmenter here.
        self.segmenter: Segmenter = segmenter or make_segmenter()
        #: Used for ``mode=line``: the upload is a single line.
        self.line_segmenter: Segmenter = WholeImageSegmenter()
        self.max_pixels = max_pixels
        self.max_aspect = max_aspect
        #: Most lines one page may hold (``too_many_lines``): bounds what a page costs.
        self.max_lines = max_lines
        self.pdf_dpi = pdf_dpi
        #: Time limit on rendering one PDF page (in a child process); None renders in here.
        self.pdf_render_seconds = pdf_render_seconds
        self.line_margin = line_margin

    def __call__(self, pages: Sequence[PageInput]) -> dict[Hashable, PageOutput | PageError]:
        """Return each page's output, or the :class:`PageError` that stopped it.

        Whatever goes wrong while one page is decoded, normalised, segmented or cut stays
        that page's error. A failure of the recognizer on the group's lines propagates to the
        caller, unless it can be pinned on some lines (``worker.recognition.reading``): then
        only the pages holding them fail, with ``model_error``.
        """
        outcomes: dict[Hashable, PageOutput | PageError] = {}
        spans: list[tuple[Hashable, list[LineBox], int, _Cut]] = []
        crops: list[Image.Image] = []
        languages: list[str | None] = []
        for page in pages:
            try:
                boxes, page_crops, cut = self._cut(page)
            except PageError as exc:
                outcomes[page.key] = exc
                continue
            spans.append((page.key, boxes, len(crops), cut))
            crops.extend(page_crops)
            # "none" reads as no language at all: recognizers without lexicons take it too.
            spoken = page.language if page.language not in (None, "", "none") else None
            languages.extend([spoken] * len(page_crops))

        read = self._read_by_language(crops, languages)
        for key, boxes, start, cut in spans:
            unread = [i for i, r in enumerate(read[start : start + len(boxes)]) if r is None]
            if unread:
                outcomes[key] = PageError(
                    "model_error",
                    f"the model failed on line {unread[0]} of this page (and every other line "
                    "of its group was read); retry the job, or report the page",
                )
                continue
            lines = [
                _line_output(r, b, cut, i)
                for i, (r, b) in enumerate(
                    zip(read[start : start + len(boxes)], boxes, strict=True)
                )
                if r is not None
            ]
            outcomes[key] = PageOutput(
                text="\n".join(ln.text for ln in lines),
                confidence=page_confidence(lines),
                lines=lines,
                size=cut.size,
            )
        return outcomes

    def _read_by_language(
        self, crops: list[Image.Image], languages: list[str | None]
    ) -> list[ReadLine | None]:
        """Every crop read, those of one language in one call (its lexicon steers them);
        one call for the whole group when it speaks one language, as most groups do."""
        spoken = list(dict.fromkeys(languages))
        if len(spoken) <= 1:
            lang = spoken[0] if spoken else None
            return self.read(crops, lang) if lang else self.read(crops)
        out: list[ReadLine | None] = [None] * len(crops)
        for lang in spoken:
            idx = [i for i, x in enumerate(languages) if x == lang]
            part = [crops[i] for i in idx]
            for i, r in zip(idx, self.read(part, lang) if lang else self.read(part), strict=True):
                out[i] = r
        return out

    def _cut(self, page: PageInput) -> tuple[list[LineBox], list[Image.Image], _Cut]:
        """Lines (on the uploaded image), their crops, and where the crops were cut."""
        try:
            raw = self._render(page)
        except PageError:
            raise
        except Exception as exc:
            # Pillow decodes lazily: a truncated or corrupt file can fail at any step here.
            raise PageError(
                "invalid_image", f"the image could not be decoded: {public_message(exc)}"
            ) from exc
        try:
            im = normalise_page(raw, max_pixels=self.max_pixels, deskew=page.mode != "line")
            segmenter = self.line_segmenter if page.mode == "line" else self.segmenter
            # A blank page or line has no text to find; reading it would only invent some.
            boxes = [] if im.info.get(BLANK_INFO_KEY) else segmenter(im)
            if len(boxes) > self.max_lines:
                raise PageError(
                    "too_many_lines",
                    f"{len(boxes)} lines found, over the limit of {self.max_lines} per page",
                )
            crops = crop_lines(im, boxes, margin=self.line_margin)
        except PageError:
            raise
        except (OSError, Image.DecompressionBombError) as exc:
            raise PageError(
                "invalid_image", f"the image could not be decoded: {public_message(exc)}"
            ) from exc
        except Exception as exc:
            # OpenCV and numpy raise their own types on shapes nobody planned for; that is
            # this page's problem, never its group's. The details stay in the worker's log.
            log.warning("page %s could not be processed", page.key, exc_info=True)
            raise PageError(
                "processing_failed",
                f"the page could not be prepared for reading ({type(exc).__name__}); "
                "check that it is a scanned page or line",
            ) from exc
        # Crops come from the deskewed page; what is stored refers to the uploaded image.
        angle = im.info.get(SKEW_INFO_KEY, 0.0)
        lines = to_source_frame(boxes, angle, im.size)
        origins = [crop_box(b, im.size, self.line_margin)[:2] for b in boxes]
        return lines, crops, _Cut(im.size, angle, origins)

    def _render(self, page: PageInput) -> Image.Image:
        if is_pdf(page.data) and self.pdf_render_seconds is not None:
            return render_pdf_limited(
                page.data,
                page.frame,
                dpi=self.pdf_dpi,
                seconds=self.pdf_render_seconds,
                max_pixels=self.max_pixels,
                max_aspect=self.max_aspect,
            )
        return render_stored_page(page.data, page.frame, self)


@dataclass(frozen=True)
class _Cut:
    """Where a page's line crops came from: the normalised page's size (the boxes' page) and
    deskew angle, and each crop's top left corner on it."""

    size: tuple[int, int]
    angle: float
    origins: list[tuple[int, int]]


def _line_output(read: ReadLine, line: LineBox, cut: _Cut, i: int) -> LineOutput:
    """A read line on the uploaded page, its words placed there (clipped to the line's box
    and outline),
    or spread over the box by character counts where the reading placed none."""
    if not isinstance(read, ReadLine):  # a plain (text, confidence) from a simple reader
        read = ReadLine(*read)
    words = list(getattr(read, "words", ()) or ())
    placed = bool(words) and all(w.box is not None for w in words)
    if placed:
        boxed: list[Word] = [
            Word(
                text=w.text,
                box=clip_to_outline(
                    box_to_source(w.box, cut.origins[i], cut.angle, cut.size, line.bbox),  # type: ignore[arg-type]
                    line.polygon,
                ),
                confidence=round(w.confidence, 4),
            )
            for w in words
        ]
    else:
        boxed = estimate_words(read.text, line.bbox, read.confidence)
        if len(words) == len(boxed):  # the reading's own word confidences, where it gave some
            for est, w in zip(boxed, words, strict=True):
                est["confidence"] = round(w.confidence, 4)
    return LineOutput(
        text=read.text,
        confidence=read.confidence,
        bbox=line.bbox,
        polygon=line.polygon,
        baseline=line.baseline,
        words=boxed,
        box_source="ctc" if placed else "estimate",
    )


def build_pipeline(settings: Settings, recognizer: Recognizer) -> Pipeline:
    """The page pipeline the settings describe, reading with ``recognizer``."""
    return Pipeline(
        read=line_reader(recognizer),
        segmenter=make_segmenter(settings.segmenter),
        max_pixels=settings.max_pixels,
        max_aspect=settings.max_aspect,
        max_lines=settings.max_lines_per_page,
        pdf_dpi=settings.pdf_dpi,
        pdf_render_seconds=settings.pdf_render_seconds,
        line_margin=settings.line_margin,
    )
