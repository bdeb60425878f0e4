"""Line datasets for training and evaluation: synthetic lines and ``lines.tsv`` folders."""

from __future__ import annotations

import csv
import multiprocessing as mp
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from worker.lineimage import fit_line
from worker.training.synth import (
    Font,
    LineRenderer,
    TextSampler,
    load_fonts,
    sample_line,
    sample_line_in_font,
    split_fonts,
)


def to_pixels(im: Image.Image, height: int, width: int, channels: int = 1) -> torch.Tensor:
    """A line image as the (C, H, W) tensor the model takes: fit, scale to -1..1.

    Same arithmetic as the ViT image processors of TrOCR models (rescale 1/255, mean 0.5,
    std 0.5), done directly because it runs for every training sample.
    """
    a = np.asarray(fit_line(im, height=height, width=width), dtype=np.float32)
    t = torch.from_numpy(a / 127.5 - 1.0).unsqueeze(0)
    return t.expand(channels, -1, -1).contiguous() if channels > 1 else t


def encode_label(tokenizer, text: str) -> list[int]:
    """Character ids plus ``</s>``; the model prepends the start token itself."""
    return [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]


@dataclass
class Curriculum:
    """Maximum characters per line as training goes on: short lines first, then long ones.

    Short lines get the decoder off the language-model plateau sooner; the limit then grows
    linearly to ``end_chars`` by ``ramp_steps``.
    """

    start_chars: int = 12
    end_chars: int = 48
    ramp_steps: int = 3000

    def max_chars(self, step: int) -> int:
        frac = min(1.0, step / max(1, self.ramp_steps))
        return int(self.start_chars + frac * (self.end_chars - self.start_chars))


def read_lines_tsv(folder: Path) -> list[tuple[Path, str]]:
    """(image path, text) pairs of a ``lines.tsv`` folder (columns ``file`` and ``text``)."""
    folder = Path(folder)
    rows = _rows(folder, "file", "text")
    return [(folder / r["file"], r["text"]) for r in rows]


def read_column(folder: Path, column: str) -> list[str]:
    """One more column of a ``lines.tsv`` folder (such as ``font``), in line order."""
    return [r[column] for r in _rows(Path(folder), "file", "text", column)]


def _rows(folder: Path, *columns: str) -> list[dict[str, str]]:
    with open(folder / "lines.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise ValueError(f"{folder}/lines.tsv needs a header with columns {', '.join(missing)}")
    return rows


class LineStream(IterableDataset):
    """Endless training samples: synthetic lines, optionally mixed with real line folders.

    ``step`` is shared memory that the trainer updates, so the curriculum follows the global
    step across data-loader worker processes and across resumes.
    """

    def __init__(
        self,
        tokenizer,
        *,
        height: int,
        width: int,
        channels: int = 1,
        seed: int = 0,
        curriculum: Curriculum | None = None,
        fonts: list[Font] | None = None,
        real: list[tuple[Path, str]] | None = None,
        real_fraction: float = 0.0,
        distort: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.height, self.width, self.channels = height, width, channels
        self.seed = seed
        self.curriculum = curriculum or Curriculum()
        self.fonts = fonts if fonts is not None else split_fonts(load_fonts())[0]
        self.real = real or []
        self.real_fraction = real_fraction if self.real else 0.0
        self.distort = distort
        self.step = mp.Value("i", 0)

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info else 0
        rng = random.Random(self.seed * 1000 + wid + self.step.value * 7919)
        sampler, renderer = TextSampler(rng), LineRenderer(rng, distort=self.distort)
        while True:
            if self.real_fraction and rng.random() < self.real_fraction:
                path, text = rng.choice(self.real)
                im = Image.open(path).convert("L")
            else:
                max_chars = self.curriculum.max_chars(self.step.value)
                im, text = sample_line(rng, sampler, renderer, self.fonts, max_chars)
            yield {
                "pixel_values": to_pixels(im, self.height, self.width, self.channels),
                "labels": encode_label(self.tokenizer, text),
            }


def render_eval_set(
    n: int, fonts: list[Font], seed: int, max_chars: int = 48
) -> list[tuple[Image.Image, str]]:
    """A fixed set of ``n`` synthetic lines (same seed, same lines)."""
    return [(im, text) for im, text, _ in render_eval_set_in_fonts(n, fonts, seed, max_chars)]


def render_eval_set_in_fonts(
    n: int, fonts: list[Font], seed: int, max_chars: int = 48
) -> list[tuple[Image.Image, str, Font]]:
    """``render_eval_set`` with the font of each line (the same lines for the same seed)."""
    rng = random.Random(seed)
    sampler, renderer = TextSampler(rng), LineRenderer(rng)
    return [sample_line_in_font(rng, sampler, renderer, fonts, max_chars) for _ in range(n)]


def write_lines_tsv(
    samples: list[tuple[Image.Image, str]], folder: Path, fonts: list[str] | None = None
) -> Path:
    """Save (image, text) pairs as a ``lines.tsv`` folder that ``htrq eval`` reads; with
    ``fonts``, a ``font`` column says what drew each line (``htrq eval --by font``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lines.tsv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(
            fh, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, lineterminator="\n"
        )
        w.writerow(["file", "text", "font"] if fonts else ["file", "text"])
        for i, (im, text) in enumerate(samples):
            name = f"line_{i:04d}.png"
            im.save(folder / name)
            w.writerow([name, text, fonts[i]] if fonts else [name, text])
    return folder


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Stack images and pad labels with -100, which the loss ignores."""
    pixels = torch.stack([f["pixel_values"] for f in features])
    longest = max(len(f["labels"]) for f in features)
    labels = torch.full((len(features), longest), -100, dtype=torch.long)
    for i, f in enumerate(features):
        labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
    return {"pixel_values": pixels, "labels": labels}


class FixedLines(torch.utils.data.Dataset):
    """A materialised list of (image, text) for validation."""

    def __init__(
        self,
        samples: list[tuple[Image.Image, str]],
        tokenizer,
        *,
        height: int,
        width: int,
        channels: int = 1,
    ) -> None:
        self.items = [
            {
                "pixel_values": to_pixels(im, height, width, channels),
                "labels": encode_label(tokenizer, t),
            }
            for im, t in samples
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
