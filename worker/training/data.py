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

from worker.recognition.lineimage import fit_line
from worker.training.augment import augment_scan
from worker.training.lines_tsv import write_tsv
from worker.training.synth import (
    Font,
    LineRenderer,
    TextSampler,
    load_fonts,
    sample_line,
    sample_line_in_font,
    split_fonts,
)


def to_pixels(
    im: Image.Image,
    height: int,
    width: int,
    channels: int = 1,
    mean: float = 0.5,
    std: float = 0.5,
) -> torch.Tensor:
    """A line image as the (C, H, W) tensor the model takes: fit, rescale, normalise.

    Same arithmetic as the ViT image processors of TrOCR models (rescale 1/255, then mean
    and std: 0.5 and 0.5 for every TrOCR checkpoint), done directly because it runs for
    every training sample. Grey lines are repeated over the channels of an RGB model.
    """
    a = np.asarray(fit_line(im, height=height, width=width), dtype=np.float32)
    t = torch.from_numpy((a / 255.0 - mean) / std).unsqueeze(0)
    return t.expand(channels, -1, -1).contiguous() if channels > 1 else t


def encode_label(tokenizer, text: str, start_token_id: int | None = None) -> list[int]:
    """The token ids a model is trained to write for ``text``, through its end token.

    The tokenizer's own special tokens are kept, as its model was trained with them: stock
    TrOCR starts decoding from ``</s>`` and writes ``<s> ... </s>`` (RoBERTa's and XLM-R's
    tokenizers add both), the built-in character tokenizer adds none and gets ``</s>``
    appended. The decoder's start token is never a label: the model prepends it itself.
    """
    ids = list(tokenizer(text).input_ids)
    if ids and ids[0] == start_token_id:
        ids = ids[1:]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass(frozen=True)
class LineEncoding:
    """How one model takes its training samples: image shape and normalisation, labels."""

    tokenizer: object
    height: int
    width: int
    channels: int = 1
    mean: float = 0.5
    std: float = 0.5
    start_token_id: int | None = None

    @classmethod
    def of(cls, model, processor) -> LineEncoding:
        ip = processor.image_processor
        size = ip.size
        return cls(
            tokenizer=processor.tokenizer,
            height=size["height"],
            width=size["width"],
            channels=model.config.encoder.num_channels,
            mean=float(ip.image_mean[0]) if ip.do_normalize else 0.0,
            std=float(ip.image_std[0]) if ip.do_normalize else 1.0,
            start_token_id=model.config.decoder_start_token_id,
        )

    def sample(self, im: Image.Image, text: str) -> dict:
        return {
            "pixel_values": to_pixels(
                im, self.height, self.width, self.channels, self.mean, self.std
            ),
            "labels": encode_label(self.tokenizer, text, self.start_token_id),
        }


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


@dataclass(frozen=True)
class LineSource:
    """One folder of real lines and how often training draws from it (weights are relative)."""

    name: str
    pairs: tuple[tuple[Path, str], ...]
    weight: float = 1.0


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
        encoding: LineEncoding,
        *,
        seed: int = 0,
        curriculum: Curriculum | None = None,
        fonts: list[Font] | None = None,
        sources: list[LineSource] | None = None,
        synthetic_weight: float = 1.0,
        distort: bool = True,
        augment: float = 1.0,
    ) -> None:
        self.encoding = encoding
        self.seed = seed
        self.curriculum = curriculum or Curriculum()
        self.fonts = fonts if fonts is not None else split_fonts(load_fonts())[0]
        self.sources = [src for src in sources or [] if src.pairs and src.weight > 0]
        self.synthetic_weight = synthetic_weight
        if not self.sources and synthetic_weight <= 0:
            raise ValueError("no training data: every source has weight 0 or no lines")
        self.distort = distort
        self.augment = augment
        self.step = mp.Value("i", 0)

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info else 0
        rng = random.Random(self.seed * 1000 + wid + self.step.value * 7919)
        sampler, renderer = TextSampler(rng), LineRenderer(rng, distort=self.distort)
        names = ["synthetic", *(src.name for src in self.sources)]
        weights = [self.synthetic_weight, *(src.weight for src in self.sources)]
        by_name = {src.name: src for src in self.sources}
        while True:
            pick = rng.choices(names, weights)[0]
            if pick != "synthetic":
                path, text = rng.choice(by_name[pick].pairs)
                im = augment_scan(Image.open(path).convert("L"), rng, strength=self.augment)
            else:
                max_chars = self.curriculum.max_chars(self.step.value)
                im, text = sample_line(rng, sampler, renderer, self.fonts, max_chars)
            yield self.encoding.sample(im, text)


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
    rows = []
    for i, (im, text) in enumerate(samples):
        name = f"line_{i:04d}.png"
        im.save(folder / name)
        rows.append([name, text, fonts[i]] if fonts else [name, text])
    write_tsv(folder / "lines.tsv", ["file", "text", "font"] if fonts else ["file", "text"], rows)
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

    def __init__(self, samples: list[tuple[Image.Image, str]], encoding: LineEncoding) -> None:
        self.items = [encoding.sample(im, t) for im, t in samples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
