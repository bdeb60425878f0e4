"""Synthetic handwriting lines: DMS-like text rendered with handwriting fonts and scan noise.

``TextSampler`` writes the kind of text a document archive holds (letters, names, addresses,
dates, amounts, form fields) with an English word-frequency prior; ``LineRenderer`` draws it
with one of the bundled fonts and the defects a real scan shows. Both take a
``random.Random`` so a seed reproduces a data set exactly.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path(__file__).parent / "fonts"

#: Font files never used for training: validation CER on them measures generalisation to
#: handwriting the model has not seen. Mixes print, cursive and marker-like hands.
HELD_OUT_FONTS = frozenset(
    {
        "patrick-hand/patrick-hand-latin-400-normal.woff",
        "kalam/kalam-latin-300-normal.woff",
        "kalam/kalam-latin-400-normal.woff",
        "kalam/kalam-latin-700-normal.woff",
        "dancing-script/DancingScript-Regular.otf",
        "sjfonts/SteveHand.ttf",
        "covered-by-your-grace/covered-by-your-grace-latin-400-normal.woff",
    }
)


@dataclass(frozen=True)
class Font:
    path: Path
    name: str  #: path relative to the font folder, as listed in fonts.tsv
    charset: frozenset[str]  #: characters the font really draws
    #: Draws lowercase as capitals (fonts.tsv says "caps-only"): its labels are upper-cased.
    caps_only: bool = False


def _charset(path: Path, missing: str) -> frozenset[str]:
    from fontTools.ttLib import TTFont  # only the training tools need fontTools

    # fontTools reports harmless quirks of some fonts' tables (extra bytes in 'post').
    logging.getLogger("fontTools").setLevel(logging.ERROR)

    with TTFont(str(path), lazy=True) as font:  # lazy: it reads the file until closed
        cmap = font.getBestCmap() or {}
    return frozenset(chr(c) for c in cmap) - set(missing)


@functools.cache
def load_fonts(font_dir: Path = FONT_DIR) -> tuple[Font, ...]:
    """Every font listed in ``fonts.tsv`` that is present, with the glyphs it really has.

    ``fonts.tsv`` records glyphs that exist in the cmap but are drawn wrongly (mis-mapped
    dashes, a stray glyph at U+00A3); those are removed so a label never lies.
    """
    fonts = []
    with open(font_dir / "fonts.tsv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            path = font_dir / row["file"]
            if not path.exists():
                continue
            missing = "".join(v for v in (row["missing_ascii"], row["missing_extra"]) if v != "-")
            fonts.append(
                Font(
                    path=path,
                    name=row["file"],
                    charset=_charset(path, missing),
                    caps_only=row["notes"].startswith("caps-only"),
                )
            )
    return tuple(fonts)


def split_fonts(fonts: tuple[Font, ...]) -> tuple[list[Font], list[Font]]:
    """(training fonts, held-out fonts)."""
    train = [f for f in fonts if f.name not in HELD_OUT_FONTS]
    held = [f for f in fonts if f.name in HELD_OUT_FONTS]
    return train, held


class TextSampler:
    """Short lines of archive-like text, at most ``max_chars`` long."""

    def __init__(self, rng: random.Random) -> None:
        from faker import Faker
        from wordfreq import top_n_list

        self.rng = rng
        self.words = top_n_list("en", 25000)
        # Zipf-like weights: frequent words dominate, as in running text.
        self.weights = [1.0 / (i + 10) for i in range(len(self.words))]
        self.fakers = [Faker(loc) for loc in ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES")]
        for i, f in enumerate(self.fakers):
            f.seed_instance(rng.randrange(1 << 30) + i)
        self.kinds = [
            (self.prose, 40),
            (self.name, 10),
            (self.address, 10),
            (self.date, 8),
            (self.amount, 6),
            (self.field, 10),
            (self.contact, 5),
            (self.quote, 5),
            (self.numbers, 3),
        ]

    def __call__(self, max_chars: int = 48) -> str:
        gen = self.rng.choices([k for k, _ in self.kinds], [w for _, w in self.kinds])[0]
        for _ in range(10):
            text = " ".join(gen().split())
            if 0 < len(text) <= max_chars:
                return text
        return text[:max_chars].strip() or "a"

    @property
    def faker(self):
        # English most of the time; other locales bring Latin-1 letters (é, ü, ß, ñ).
        return self.fakers[0] if self.rng.random() < 0.6 else self.rng.choice(self.fakers)

    def _words(self, n: int) -> list[str]:
        ws = self.rng.choices(self.words, self.weights, k=n)
        return ["I" if w == "i" else w for w in ws]

    def prose(self) -> str:
        ws = self._words(self.rng.randint(1, 9))
        r = self.rng.random()
        if r < 0.6:
            ws[0] = ws[0][:1].upper() + ws[0][1:]
        elif r < 0.65:
            ws = [w.upper() for w in ws]
        if self.rng.random() < 0.15:
            i = self.rng.randrange(len(ws))
            ws[i] = ws[i].capitalize()
        text = " ".join(ws)
        if len(ws) > 3 and self.rng.random() < 0.3:
            i = self.rng.randrange(1, len(ws) - 1)
            text = (
                " ".join(ws[:i])
                + self.rng.choice([",", ";", " -", " –", ":"])
                + " "
                + " ".join(ws[i:])
            )
        return text + self.rng.choice(["", "", "", ".", ".", ",", "!", "?", ":", ";", "…"])

    def name(self) -> str:
        f = self.faker
        return self.rng.choice(
            [
                f.name(),
                f.name(),
                f.last_name() + ", " + f.first_name(),
                self.rng.choice(["Mr. ", "Mrs. ", "Dr. ", "Miss ", "Prof. "]) + f.last_name(),
                f.first_name()[0] + ". " + f.last_name(),
                f.company(),
            ]
        )

    def address(self) -> str:
        f = self.faker
        return self.rng.choice(
            [
                f.street_address(),
                f.city(),
                f.postcode() + " " + f.city(),
                f.city() + ", " + f.country(),
            ]
        )

    def date(self) -> str:
        d = self.fakers[0].date_between("-150y", "+5y")
        months = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ]
        m = months[d.month - 1]
        return self.rng.choice(
            [
                f"{m} {d.day}, {d.year}",
                f"{d.day} {m} {d.year}",
                f"{d.day} {m[:3]}. {d.year}",
                f"{d.day:02d}/{d.month:02d}/{d.year}",
                f"{d.month}/{d.day}/{d.year % 100:02d}",
                f"{d.year}-{d.month:02d}-{d.day:02d}",
                f"{d.day}.{d.month}.{d.year}",
                f"{m[:3]} {d.day} - {d.year % 100:02d}",
                f"the {d.day}th of {m}",
            ]
        )

    def amount(self) -> str:
        v = self.rng.choice([self.rng.uniform(0, 100), self.rng.uniform(0, 10000)])
        cur = self.rng.choice(["$", "£", "€", "", "USD ", "EUR "])
        s = f"{v:,.2f}" if self.rng.random() < 0.7 else f"{int(v)}"
        if self.rng.random() < 0.2:
            s = s.replace(",", " ").replace(".", ",")
        pre = self.rng.choice(["", "", "Total: ", "Paid ", "Amount ", "Balance due "])
        return pre + (cur + s if self.rng.random() < 0.8 else s + " " + cur.strip())

    def field(self) -> str:
        f = self.faker
        label = self.rng.choice(
            [
                "Name",
                "Date",
                "Ref",
                "No.",
                "Invoice No.",
                "Account",
                "Tel.",
                "Signed",
                "Witness",
                "Subject",
                "Re",
                "Dear",
                "Item",
                "Qty",
            ]
        )
        value = self.rng.choice(
            [
                f.last_name(),
                str(self.rng.randint(1, 99999)),
                f.bothify("??-####").upper(),
                " ".join(self._words(self.rng.randint(1, 3))),
                f.first_name(),
            ]
        )
        sep = self.rng.choice([": ", " ", " - ", ": ", " #"])
        return label + sep + value + (":" if label == "Dear" else "")

    def contact(self) -> str:
        f = self.fakers[0]
        return self.rng.choice([f.phone_number(), f.email(), f.url(), f.ssn()])

    def quote(self) -> str:
        inner = " ".join(self._words(self.rng.randint(1, 5)))
        q = self.rng.choice(
            [("“", "”"), ('"', '"'), ("‘", "’"), ("'", "'"), ("(", ")"), ("[", "]")]
        )
        return q[0] + inner.capitalize() + q[1] + self.rng.choice(["", ".", ","])

    def numbers(self) -> str:
        return self.rng.choice(
            [
                " ".join(str(self.rng.randint(0, 999)) for _ in range(self.rng.randint(1, 5))),
                f"{self.rng.randint(1, 99)}%",
                f"{self.rng.randint(1, 20)} x {self.rng.randint(1, 99)}",
                f"p. {self.rng.randint(1, 400)}",
                f"#{self.rng.randint(1, 9999)}",
                f"{self.rng.randint(1, 12)}:{self.rng.randint(0, 59):02d}",
            ]
        )


@functools.cache
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


class LineRenderer:
    """Draw a text line as a scanned handwritten line would look.

    ``clean=True`` turns off every random defect (for debugging and for tests that need a
    legible line). ``distort=True`` also varies the letterforms themselves (see
    :meth:`_distort` and :meth:`_draw_glyphs`); training uses it, evaluation sets do not, so
    their figures stay comparable across checkpoints.
    """

    def __init__(self, rng: random.Random, *, clean: bool = False, distort: bool = False) -> None:
        self.rng = rng
        self.clean = clean
        self.distort = distort and not clean

    def __call__(
        self,
        text: str,
        font: Font,
        *,
        word_boxes: list[tuple[float, float, float, float]] | None = None,
    ) -> Image.Image:
        """The line drawn; with ``word_boxes`` (a list to fill) each word's ink box on the
        image is appended to it, and the line is drawn without the bending, shearing and
        turning that would move the words off their boxes (noise, blur and spacing stay)."""
        rng = self.rng
        size = rng.randint(30, 46)
        f = _font(font.path, size)
        ink_mask = self._draw_text(text, f, size, word_boxes)
        if self.distort and word_boxes is None:
            ink_mask = self._distort(ink_mask, size)
        if not self.clean and word_boxes is None:
            ink_mask = self._geometry(ink_mask)
        bbox = ink_mask.getbbox() or (0, 0, ink_mask.width, ink_mask.height)
        ink_mask, (left, top) = self._crop(ink_mask, bbox, size)
        if word_boxes is not None:
            word_boxes[:] = [
                (x0 - left, y0 - top, x1 - left, y1 - top) for x0, y0, x1, y1 in word_boxes
            ]
        return self._compose(ink_mask)

    def _draw_text(
        self,
        text: str,
        f: ImageFont.FreeTypeFont,
        size: int,
        word_boxes: list[tuple[float, float, float, float]] | None = None,
    ) -> Image.Image:
        rng = self.rng
        # Word by word, so baselines wobble and spacing varies as in real writing.
        words = text.split(" ")
        space = f.getlength(" ") * (1.0 if self.clean else rng.uniform(0.7, 1.8))
        track = 0.0 if self.clean or rng.random() < 0.75 else rng.uniform(-0.04, 0.12) * size
        wobble = 0.0 if self.clean else rng.uniform(0, 0.08) * size
        stroke = 0 if self.clean or rng.random() < 0.8 else 1
        # Decided after the draws above so that lines without distortion stay byte-identical.
        glyphs = self.distort and rng.random() < 0.5 and word_boxes is None
        width = int(
            sum(f.getlength(w) * (1.2 if glyphs else 1) + len(w) * abs(track) for w in words)
            + space * len(words)
            + size * 2
        )
        height = int(size * 2.2)
        mask = Image.new("L", (max(width, 8), height), 0)
        draw = ImageDraw.Draw(mask)
        x, y0 = size * 0.5, size * 0.5
        for w in words:
            y = y0 + rng.uniform(-wobble, wobble)
            if glyphs:
                x = self._draw_glyphs(mask, w, x, y, f, size, track, stroke)
            elif track:
                for ch in w:
                    draw.text((x, y), ch, font=f, fill=255, stroke_width=stroke, stroke_fill=255)
                    if word_boxes is not None and ch.strip():
                        box = draw.textbbox((x, y), ch, font=f, stroke_width=stroke)
                        word_boxes.append(box)
                    x += f.getlength(ch) + track
                if word_boxes is not None and w:  # the word's letters as one box
                    mine = word_boxes[len(word_boxes) - sum(1 for c in w if c.strip()) :]
                    del word_boxes[len(word_boxes) - len(mine) :]
                    word_boxes.append(
                        (min(b[0] for b in mine), min(b[1] for b in mine),
                         max(b[2] for b in mine), max(b[3] for b in mine))
                    )  # fmt: skip
            else:
                draw.text((x, y), w, font=f, fill=255, stroke_width=stroke, stroke_fill=255)
                if word_boxes is not None and w:
                    word_boxes.append(draw.textbbox((x, y), w, font=f, stroke_width=stroke))
                x += f.getlength(w)
            x += space
        if not self.clean and stroke == 0 and size > 36 and rng.random() < 0.1:
            mask = mask.filter(ImageFilter.MinFilter(3))  # thinner pen
        return mask

    def _draw_glyphs(
        self,
        mask: Image.Image,
        word: str,
        x: float,
        y: float,
        f: ImageFont.FreeTypeFont,
        size: int,
        track: float,
        stroke: int,
    ) -> float:
        """Draw ``word`` letter by letter, each with its own small scale, slant, turn and
        lift; return where the next word starts.

        A font draws every 'n' identically; a hand never does. Varying each letter on its
        own teaches shapes rather than one font's templates. Letters may crowd each other
        (negative tracking), as in hurried writing where they touch.
        """
        rng = self.rng
        track = rng.uniform(-0.08, 0.06) * size if rng.random() < 0.6 else track
        pad = int(size * 0.6)
        for ch in word:
            adv = f.getlength(ch)
            cell = Image.new("L", (int(adv) + 2 * pad, mask.height), 0)
            ImageDraw.Draw(cell).text(
                (pad, y), ch, font=f, fill=255, stroke_width=stroke, stroke_fill=255
            )
            sx, sy = rng.uniform(0.85, 1.15), rng.uniform(0.88, 1.12)
            shear = rng.uniform(-0.15, 0.15)
            turn = math.radians(rng.uniform(-6, 6))
            # Forward map about the letter's centre: rotation · (scale, shear); PIL wants
            # the inverse (output pixel -> source pixel).
            cos, sin = math.cos(turn), math.sin(turn)
            m = np.array([[cos, -sin], [sin, cos]]) @ np.array([[sx, shear], [0, sy]])
            inv = np.linalg.inv(m)
            centre = np.array([pad + adv / 2, y + size * 0.6])
            lift = np.array([0.0, rng.uniform(-0.05, 0.05) * size])
            off = centre - inv @ (centre + lift)
            cell = cell.transform(
                cell.size,
                Image.Transform.AFFINE,
                (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
                resample=Image.Resampling.BILINEAR,
            )
            left = int(x) - pad
            region = (left, 0, left + cell.width, mask.height)
            mask.paste(ImageChops.lighter(mask.crop(region), cell), region)
            x += max(adv * sx + track, adv * 0.5)
        return x

    def _distort(self, mask: Image.Image, size: int) -> Image.Image:
        """Bend the strokes with a smooth random field and thicken or thin the pen.

        A few dozen fonts are a few dozen hands; the model learns their exact letterforms
        and misreads an unseen hand's 'n' as 'w'. Displacements of a few percent of the
        font size, smooth over about a letter, make every line a slightly new hand.
        """
        rng = self.rng
        a = np.asarray(mask)
        h, w = a.shape
        if rng.random() < 0.7:
            nprng = np.random.default_rng(rng.randrange(1 << 30))
            cell = size * rng.uniform(0.4, 1.0)
            amp = size * rng.uniform(0.02, 0.06)
            grid = (max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))
            dx, dy = (
                cv2.resize(
                    nprng.normal(0, amp, grid).astype(np.float32),
                    (w, h),
                    interpolation=cv2.INTER_CUBIC,
                )
                for _ in range(2)
            )
            xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            a = cv2.remap(a, xs + dx, ys + dy, cv2.INTER_LINEAR, borderValue=0)
        pen = rng.random()
        if pen < 0.2:
            a = cv2.dilate(a, np.ones((2, 2), np.uint8))
        elif pen < 0.3 and size >= 36:
            a = cv2.erode(a, np.ones((2, 2), np.uint8))
        return Image.fromarray(a, mode="L")

    def _geometry(self, mask: Image.Image) -> Image.Image:
        rng = self.rng
        shear = math.tan(math.radians(rng.uniform(-14, 14)))
        w, h = mask.size
        extra = int(abs(shear) * h) + 2
        # Shear around the vertical centre so text stays on the canvas.
        mask = mask.transform(
            (w + 2 * extra, h),
            Image.Transform.AFFINE,
            (1, shear, -extra - shear * h / 2, 0, 1, 0),
            resample=Image.Resampling.BILINEAR,
        )
        angle = rng.uniform(-2.0, 2.0)
        if abs(angle) > 0.2:
            mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        sx = rng.uniform(0.85, 1.15)  # narrower or wider hands
        if abs(sx - 1) > 0.02:
            mask = mask.resize(
                (max(1, int(mask.width * sx)), mask.height), Image.Resampling.BILINEAR
            )
        return mask

    def _crop(
        self, mask: Image.Image, bbox: tuple[int, int, int, int], size: int
    ) -> tuple[Image.Image, tuple[int, int]]:
        """The line cut out with a margin, and where the cut starts (left, top)."""
        rng = self.rng
        x0, y0, x1, y1 = bbox
        if self.clean:
            m = size // 4
            return mask.crop((x0 - m, y0 - m, x1 + m, y1 + m)), (x0 - m, y0 - m)
        th = y1 - y0
        box = (
            x0 - int(rng.uniform(0, 0.8) * th),
            y0 - int(rng.uniform(-0.03, 0.35) * th),
            x1 + int(rng.uniform(0, 0.8) * th),
            y1 + int(rng.uniform(-0.03, 0.35) * th),
        )
        return mask.crop(box), box[:2]

    def _compose(self, mask: Image.Image) -> Image.Image:
        rng = self.rng
        w, h = mask.size
        if self.clean:
            return Image.fromarray(255 - np.asarray(mask), mode="L")
        paper = rng.uniform(165, 255)
        ink = rng.uniform(0, min(90, paper - 100))
        nprng = np.random.default_rng(rng.randrange(1 << 30))
        bg = np.full((h, w), paper, dtype=np.float32)
        if rng.random() < 0.6:  # paper texture: low-frequency blotches
            tex = nprng.normal(0, rng.uniform(2, 12), (max(1, h // 8), max(1, w // 8))).astype(
                np.float32
            )
            tex_im = Image.fromarray(tex).resize((w, h), Image.Resampling.BICUBIC)
            bg += np.asarray(tex_im)
        if rng.random() < 0.25:  # ruled line near the baseline, sometimes one above
            tone = rng.uniform(paper - 70, paper - 15)
            for frac in [rng.uniform(0.72, 0.95)] + (
                [rng.uniform(0.0, 0.08)] if rng.random() < 0.3 else []
            ):
                y = int(frac * (h - 1))
                bg[y : y + rng.choice([1, 1, 2]), :] = tone
        alpha = np.asarray(mask, dtype=np.float32) / 255.0
        ink_level = ink + nprng.normal(0, rng.uniform(0, 10), (h, w))  # uneven ink
        img = bg * (1 - alpha) + ink_level * alpha
        if rng.random() < 0.7:
            img += nprng.normal(0, rng.uniform(1, 7), (h, w))
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")
        if rng.random() < 0.4:
            out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.3)))
        if rng.random() < 0.35:  # JPEG artefacts, as from a cheap scanner or phone
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=rng.randint(25, 85))
            out = Image.open(io.BytesIO(buf.getvalue())).convert("L")
        return out


def sample_line(
    rng: random.Random,
    sampler: TextSampler,
    renderer: LineRenderer,
    fonts: list[Font],
    max_chars: int,
) -> tuple[Image.Image, str]:
    """One (image, text) pair whose every character the chosen font can draw."""
    im, text, _ = sample_line_in_font(rng, sampler, renderer, fonts, max_chars)
    return im, text


def sample_line_in_font(
    rng: random.Random,
    sampler: TextSampler,
    renderer: LineRenderer,
    fonts: list[Font],
    max_chars: int,
) -> tuple[Image.Image, str, Font]:
    """``sample_line`` that also says which font drew the line."""
    while True:
        font = rng.choice(fonts)
        for _ in range(8):
            text = sampler(max_chars)
            if font.caps_only:
                text = text.upper()
            if all(c == " " or c in font.charset for c in text):
                return renderer(text, font), text, font
