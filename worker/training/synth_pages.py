"""Synthetic handwritten pages with exact line boxes, for measuring line segmentation.

A page is drawn line by line with one of the bundled handwriting fonts, each line into its own
label so that its ground-truth box is the box of its own ink after every distortion (word
baseline wander, slant, page skew). Variation per page: font, size, line spacing (and its
jitter), ruled or plain paper, indentation, ragged line ends, an occasional marginal note,
paper tone and noise. A seed reproduces a page exactly.

Text comes from a tiny built-in word list by default, so tests need nothing beyond Pillow,
numpy and OpenCV; ``bench/segmentation.py`` can pass the training text sampler instead.
"""

from __future__ import annotations

import csv
import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path(__file__).parent / "fonts"

#: Characters every usable font draws (fonts.tsv lists none of them as missing).
SAFE_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-/()&"
)

#: Words for the built-in text source (kept as one string: easier to read than a list).
_WORD_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if so "
    "no will my more who what up out about dear letter sorrow friend house morning evening "
    "thank kindly received yours truly sincerely respectfully answer wish hope sorry news "
    "father mother sister brother family write written soon early week month year Monday "
    "Tuesday March April June Stanford London Boston county street office money paid account "
    "note page people university president telephone meeting given place great little "
    "should could never always often before after while under between 1905 12 3 47 250"
)
_WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class SynthLine:
    text: str
    bbox: tuple[int, int, int, int]  #: x0, y0, x1, y1 of the line's ink, page pixels


@dataclass
class SynthPage:
    image: Image.Image  #: 8-bit grayscale page
    lines: list[SynthLine] = field(default_factory=list)  #: in reading order
    font: str = ""
    ruled: bool = False
    skew: float = 0.0  #: degrees the page was rotated (counter-clockwise)


@functools.cache
def segmentation_fonts(font_dir: Path = FONT_DIR) -> tuple[Path, ...]:
    """Fonts fit for whole pages: not caps-only, not the secretary hand, all SAFE_CHARS drawn."""
    fonts = []
    with open(font_dir / "fonts.tsv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            path = font_dir / row["file"]
            notes = row["notes"].lower()
            missing = set(row["missing_ascii"]) if row["missing_ascii"] != "-" else set()
            if not path.exists() or "caps-only" in notes or "secretary" in notes:
                continue
            if missing & SAFE_CHARS:
                continue
            fonts.append(path)
    return tuple(fonts)


def word_text(rng: random.Random, max_chars: int) -> str:
    """A line of plain words, at most ``max_chars`` long."""
    words: list[str] = []
    while True:
        w = rng.choice(_WORDS)
        if len(" ".join([*words, w])) > max_chars:
            break
        words.append(w)
    text = " ".join(words) or rng.choice(_WORDS)[:max_chars]
    if rng.random() < 0.3:
        text += rng.choice([".", ",", ""])
    return text[:1].upper() + text[1:] if rng.random() < 0.5 else text


def archive_text(seed: int) -> Callable[[random.Random, int], str]:
    """A text source for :func:`render_page` drawing on the training text sampler (letters,
    names, dates, amounts...), as the recognizer was trained on; needs the ``train`` extra."""
    from worker.training.synth import TextSampler

    sampler = TextSampler(random.Random(seed))
    return lambda _rng, max_chars: sampler(max_chars)


def render_page(
    seed: int,
    *,
    size: tuple[int, int] = (1700, 2200),
    fonts: tuple[Path, ...] | None = None,
    text: Callable[[random.Random, int], str] = word_text,
    max_skew: float = 1.5,
) -> SynthPage:
    """Render one page; ``text(rng, max_chars)`` supplies each line's text."""
    rng = random.Random(seed)
    fonts = fonts or segmentation_fonts()
    font_path = rng.choice(fonts)
    w, h = size
    px = rng.randint(34, 60)  # font size: about 25-45 px letter height at this page size
    font = ImageFont.truetype(str(font_path), px)
    ascent, descent = font.getmetrics()
    # Line pitch from the font's own extent, so tall-looped hands are not packed into each
    # other; tight pages still have ascenders and descenders that touch now and then.
    pitch = max(1.6 * px, 0.9 * (ascent + descent)) * rng.uniform(1.0, 1.4)
    ruled = rng.random() < 0.5
    left, right = rng.randint(90, 220), w - rng.randint(60, 160)
    top = rng.randint(80, 200)

    ink = np.zeros((h, w), np.float32)  # ink coverage 0..1
    labels = np.zeros((h, w), np.uint8)  # line number + 1 where the line has ink
    texts: list[str] = []
    rules: list[int] = []
    y = float(top)
    note_at = rng.randrange(2, 10) if rng.random() < 0.3 and left > 150 else -1
    while y + pitch < h - 80 and len(texts) < 250:
        baseline = round(y + pitch * 0.7)
        rules.append(baseline + 2)
        if rng.random() < 0.08:  # a skipped line, as between paragraphs
            y += pitch * (1 if ruled else rng.uniform(0.6, 1.2))
            continue
        indent = rng.randint(0, 4) * px if rng.random() < 0.25 else rng.randint(0, px // 3)
        x0 = left + indent
        # Ragged right end: lines stop between half and all of the available width.
        avail = (right - x0) * (1.0 if rng.random() < 0.6 else rng.uniform(0.4, 1.0))
        line = _fit_text(rng, text, font, avail)
        if line:
            _draw_line(rng, ink, labels, len(texts) + 1, line, font, x0, baseline, px)
            texts.append(line)
        if len(texts) == note_at:  # a marginal note, smaller, in the left margin
            small = ImageFont.truetype(str(font_path), max(20, px * 2 // 3))
            note = _fit_text(rng, text, small, left - 40)
            if note:
                _draw_line(rng, ink, labels, len(texts) + 1, note, small, 20, baseline, px)
                texts.append(note)
        y += pitch * (1.0 if ruled else rng.uniform(0.93, 1.1))

    page = _paper(rng, (h, w), rules if ruled else [], left)
    tone = rng.uniform(0, 70)
    page = page * (1 - ink) + tone * ink
    skew = rng.uniform(-max_skew, max_skew)
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), skew, 1.0)
    paper = float(np.median(page))
    page = cv2.warpAffine(page, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=paper)
    labels = cv2.warpAffine(labels, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    page += rng.uniform(2, 8) * np.random.default_rng(seed).standard_normal(page.shape)
    image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8), "L")

    lines = []
    for i, line_text in enumerate(texts, start=1):
        ys, xs = np.nonzero(labels == i)
        if len(xs):
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            lines.append(SynthLine(line_text, box))
    return SynthPage(image, _reading_order(lines), font_path.name, ruled, skew)


def _fit_text(
    rng: random.Random,
    text: Callable[[random.Random, int], str],
    font: ImageFont.FreeTypeFont,
    width: float,
) -> str:
    """Text whose rendering fits ``width`` (a few tries, then the longest prefix that fits)."""
    max_chars = max(1, int(width / max(1.0, font.getlength("n"))))
    s = ""
    for _ in range(5):
        s = "".join(c for c in text(rng, max_chars) if c in SAFE_CHARS).strip()
        if s and font.getlength(s) <= width:
            return s
    while s and font.getlength(s) > width:
        s = s[:-1].rstrip()
    return s


def _draw_line(
    rng: random.Random,
    ink: np.ndarray,
    labels: np.ndarray,
    label: int,
    text: str,
    font: ImageFont.FreeTypeFont,
    x0: int,
    baseline: int,
    px: int,
) -> None:
    """Draw ``text`` word by word with a wandering baseline, slanted, into ``ink``/``labels``."""
    h, w = ink.shape
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    drift, x = 0.0, float(x0)
    slope = rng.uniform(-0.015, 0.015)  # the whole line rises or falls a little
    space = font.getlength(" ") * rng.uniform(1.0, 1.8)
    for word in text.split(" "):
        drift += rng.uniform(-0.06, 0.06) * px  # each word sits a little off the line
        drift = max(-0.2 * px, min(0.2 * px, drift))
        y = baseline + drift + slope * (x - x0)
        draw.text((x, y), word, font=font, fill=255, anchor="ls")
        x += font.getlength(word) + space
    arr = np.asarray(layer, np.float32) / 255.0
    shear = math.tan(math.radians(rng.uniform(-12, 12)))  # slant, about the baseline
    m = np.float32([[1, -shear, shear * baseline], [0, 1, 0]])
    arr = cv2.warpAffine(arr, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    np.maximum(ink, arr, out=ink)
    labels[arr > 0.5] = label


def _paper(rng: random.Random, shape: tuple[int, int], rules: list[int], left: int) -> np.ndarray:
    h, w = shape
    base = rng.uniform(215, 250)
    # Uneven lighting: a gentle gradient across the sheet.
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    page = base - rng.uniform(0, 20) * (gx / w) * (gy / h)
    if rules:
        img = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        shade = int(base - rng.uniform(40, 90))
        for r in rules:
            d.line([(0, r), (w, r)], fill=shade, width=rng.choice([1, 2, 2, 3]))
        if rng.random() < 0.5:  # a margin rule
            d.line([(left - 20, 0), (left - 20, h)], fill=shade, width=2)
        page = np.asarray(img, np.float32)
    return page


def _reading_order(lines: list[SynthLine]) -> list[SynthLine]:
    return sorted(lines, key=lambda ln: ((ln.bbox[1] + ln.bbox[3]) // 2, ln.bbox[0]))
