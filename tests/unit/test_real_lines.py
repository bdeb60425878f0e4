"""Training on real lines: writer-disjoint splits, sampling weights, scan augmentation, and a
larger input that starts where the smaller one was."""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from worker.training.augment import augment_scan
from worker.training.build import build_tiny_model, build_tokenizer
from worker.training.cli import _weighted_folder
from worker.training.data import LineEncoding, LineSource, LineStream, write_lines_tsv
from worker.training.train import group_cer, writable
from worker.training.writers import split_collection

#: Seconds each (training data pipelines over real line folders): left out of the fast subset.
pytestmark = pytest.mark.slow


def _line(text: str = "Dear Sir", width: int = 160) -> Image.Image:
    im = Image.new("L", (width, 32), 235)
    ImageDraw.Draw(im).text((4, 10), text, fill=20)
    return im


def _collection(folder: Path, writers: dict[str, int], texts: list[str] | None = None) -> Path:
    """A lines.tsv folder with a writer_or_document column: ``writers`` maps name -> lines."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, k = [], 0
    for writer, n in writers.items():
        for _ in range(n):
            text = texts[k] if texts and k < len(texts) else f"line {k}"
            name = f"l{k}.png"
            _line(text).save(folder / name)
            rows.append(f"{name}\t{text}\tpage{k}\t{writer}")
            k += 1
    (folder / "lines.tsv").write_text(
        "file\ttext\tpage\twriter_or_document\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )
    return folder


def test_validation_holds_out_whole_writers(tmp_path: Path) -> None:
    """No writer has lines on both sides; the split depends on the names and seed only."""
    folder = _collection(tmp_path / "c", {f"w{i}": 5 + i for i in range(10)})
    tok = build_tokenizer()
    a = split_collection(folder, writable=writable(tok), val_lines=12, seed=0)
    b = split_collection(folder, writable=writable(tok), val_lines=12, seed=0)
    assert a == b and len(a.val) >= 12 and len(a.train) + len(a.val) == 95
    val_paths = {p for p, _ in a.val}
    assert not val_paths & {p for p, _ in a.train}
    tsv = (folder / "lines.tsv").read_text().splitlines()[1:]
    writer_of = {folder / r.split("\t")[0]: r.split("\t")[3] for r in tsv}
    held = {writer_of[p] for p in val_paths}
    assert held == set(a.val_writers)
    assert not held & {writer_of[p] for p, _ in a.train}
    other = split_collection(folder, writable=writable(tok), val_lines=12, seed=1)
    assert other.val_writers != a.val_writers


def test_one_writer_stays_all_training_and_unwritable_lines_are_dropped(tmp_path: Path) -> None:
    """A single-writer folder is never emptied into validation; a label the tokenizer cannot
    write (œ is not in the built-in charset) is skipped, not trained as <unk>."""
    folder = _collection(tmp_path / "c", {"only": 3}, texts=["bœuf", "soeur", "frère"])
    split = split_collection(folder, writable=writable(build_tokenizer()), val_lines=50)
    assert split.val == () and split.skipped == 1
    assert [t for _, t in split.train] == ["soeur", "frère"]


def test_sources_are_drawn_in_proportion_to_their_weights(tmp_path: Path) -> None:
    """Weights 3:1 between two real folders (no synthetic lines) give about 3:1 samples."""
    tok = build_tokenizer()
    enc = LineEncoding(tokenizer=tok, height=16, width=128)
    a = LineSource("a", ((tmp_path / "a.png", "aaaa"),), weight=3.0)
    b = LineSource("b", ((tmp_path / "b.png", "bbbb"),), weight=1.0)
    _line("aaaa").save(a.pairs[0][0])
    _line("bbbb").save(b.pairs[0][0])
    stream = LineStream(enc, sources=[a, b], synthetic_weight=0.0, augment=0.0)
    firsts = Counter(tok.decode(s["labels"][:1]) for s, _ in zip(stream, range(800), strict=False))
    assert 2.4 < firsts["a"] / firsts["b"] < 3.8
    with pytest.raises(ValueError, match="no training data"):
        LineStream(enc, sources=[], synthetic_weight=0.0)


def test_weighted_folder_arguments() -> None:
    """`--lines DIR=W` parses; no weight means 1; a bad or negative weight is refused."""
    assert _weighted_folder("runs/x=0.4") == (Path("runs/x"), 0.4)
    assert _weighted_folder("runs/x") == (Path("runs/x"), 1.0)
    for bad in ("runs/x=lots", "runs/x=-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _weighted_folder(bad)


def test_augmentation_varies_a_line_but_keeps_its_ink() -> None:
    """Augmented copies differ from the original and from each other, keep a paper-and-ink
    picture (dark strokes on a light ground), and strength 0 is the identity."""
    im = Image.new("L", (320, 48), 235)
    font = ImageFont.load_default(size=24)
    ImageDraw.Draw(im).text((6, 10), "Dear Mrs. Stanford", fill=20, font=font, stroke_width=1)
    rng = random.Random(3)
    outs = [augment_scan(im, rng) for _ in range(12)]
    base = np.asarray(im, dtype=np.float32)
    changed = [o for o in outs if o.size != im.size or np.abs(np.asarray(o) - base).mean() > 0.5]
    assert len(changed) >= 9
    for o in outs:
        a = np.asarray(o, dtype=np.float32)
        assert o.mode == "L" and abs(o.height - im.height) <= 2
        assert np.percentile(a, 90) - np.percentile(a, 1) > 80  # ink still darker than paper
    assert augment_scan(im, rng, strength=0) is im


def test_group_cer_reports_each_collection_and_their_mean() -> None:
    """Each group's CER, and an unweighted mean that picks the best model."""
    out = group_cer(["ab", "cd", "efgh"], ["ab", "cx", "efgh"], ["s", "s", "r"])
    assert out["cer_s"] == pytest.approx(0.25) and out["cer_r"] == 0.0
    assert out["cer"] == pytest.approx(0.125)


def test_an_enlarged_input_reads_as_the_model_did_on_the_half_size_image(tmp_path: Path) -> None:
    """`htrq enlarge-input`: on a 2x image the new patch projection computes exactly what the
    old one did on the block-averaged image, so every encoder output is the same."""
    from transformers import AutoProcessor

    from worker.recognition.loading import load_model
    from worker.training.reshape import enlarge_input

    small = build_tiny_model(tmp_path / "small")
    big = enlarge_input(small, tmp_path / "big", factor=2)
    m_small, m_big = load_model(str(small)).eval(), load_model(str(big)).eval()
    assert AutoProcessor.from_pretrained(big).image_processor.size["height"] == 32
    assert m_big.config.encoder.patch_size == [32, 32]
    x = torch.randn(2, 1, 32, 256)
    half = torch.nn.functional.avg_pool2d(x, 2)
    with torch.no_grad():
        a = m_small.encoder(pixel_values=half).last_hidden_state
        b = m_big.encoder(pixel_values=x).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)


def test_real_line_folders_train_with_a_validation_group_each(tmp_path: Path) -> None:
    """A short run on two real folders and synthetic lines validates on each folder's
    held-out writers and records which writers they were."""
    import json

    from worker.training.train import TrainConfig, train

    c1 = _collection(tmp_path / "one", {f"a{i}": 3 for i in range(4)})
    c2 = _collection(tmp_path / "two", {f"b{i}": 3 for i in range(4)})
    write_lines_tsv([(_line("x"), "x")], tmp_path / "unused")
    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "run"
    train(
        TrainConfig(
            out_dir=out, export_dir=out / "best", init=str(model), steps=2, batch_size=2,
            eval_every=2, save_every=2, val_lines=4, lines=[(c1, 1.0), (c2, 1.0)],
            synthetic_weight=0.5, val_real_lines=3, workers=0, curriculum_steps=0,
            precision="fp32",
        )
    )  # fmt: skip
    split = json.loads((out / "val_split.json").read_text())
    assert set(split) == {"one", "two"}
    assert all(v["val_lines"] >= 3 and v["val_writers"] for v in split.values())
    state = json.loads((out / "best" / "training_state.json").read_text())
    assert state["step"] == 2 and state["val_cer"] >= 0
