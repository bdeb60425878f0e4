"""Models shaped like stock TrOCR checkpoints read lines, pages and PDFs, evaluate and train.

Each test runs for both shapes (``stock_model``: trocr-base-like and trocr-small-like).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from htrq.settings import Settings
from tests.images import page_png
from tests.pdfs import text_pdf
from worker.recognition.decoding import length_limits
from worker.recognition.lineimage import prepare_line, split_aspect
from worker.recognition.pipeline import PageInput, PageOutput, build_pipeline
from worker.recognition.provenance import read_by
from worker.recognition.reading import line_reader
from worker.serving.app import load_recognizer
from worker.training.data import LineEncoding, collate, write_lines_tsv


def _line(width: int, text: str = "Dear Mrs. Stanford, thank you") -> Image.Image:
    im = Image.new("L", (width, 24), 255)
    ImageDraw.Draw(im).text((4, 6), text * (1 + width // 200), fill=0)
    return im


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


class Counting:
    """The recognizer, keeping how many crops each call got."""

    def __init__(self, rec) -> None:
        self.rec, self.calls = rec, []
        self.width, self.height = rec.width, rec.height

    def __call__(self, crops):
        self.calls.append(len(crops))
        return self.rec(crops)


def _settings(model: Path, tmp_path: Path) -> Settings:
    return Settings(
        model=str(model), storage_dir=tmp_path, batch_size=4, num_beams=2, max_new_tokens=12
    )


def test_a_square_input_reads_every_line_whole(stock_model: Path, tmp_path: Path) -> None:
    """A 384x384 model is never given pieces: a line of 60:1 is one crop, read once."""
    rec = load_recognizer(_settings(stock_model, tmp_path))
    assert (rec.width, rec.height) == (384, 384) and split_aspect(384, 384) is None
    counting = Counting(rec)
    wide = _line(1500)
    assert wide.width / prepare_line(wide).height > 24
    (read,) = line_reader(counting)([wide])
    assert counting.calls == [1]
    assert isinstance(read[0], str) and 0.0 <= read[1] <= 1.0


def test_the_pipeline_reads_a_line_a_page_and_a_pdf(stock_model: Path, tmp_path: Path) -> None:
    """The page pipeline built from settings reads each kind of input with a stock shape."""
    settings = _settings(stock_model, tmp_path)
    pipeline = build_pipeline(settings, load_recognizer(settings))
    out = pipeline(
        [
            PageInput("line", _png(_line(400)), mode="line"),
            PageInput("page", page_png("Dear Sir, a page", size=(320, 64))),
            PageInput("pdf", text_pdf([(300, 200)], lines=3)),
        ]
    )
    for key in ("line", "page", "pdf"):
        page = out[key]
        assert isinstance(page, PageOutput), f"{key}: {page}"
        assert page.lines, key
        assert all(0.0 <= ln.confidence <= 1.0 for ln in page.lines)
        assert page.text == "\n".join(ln.text for ln in page.lines)
        # No CTC head over columns: every line's words are estimated, and say so.
        for ln in page.lines:
            assert ln.box_source == "estimate" and ln.words is not None
            assert " ".join(w["text"] for w in ln.words) == " ".join(ln.text.split())
    assert len(out["pdf"].lines) == 3  # type: ignore[union-attr]


def test_a_line_is_never_read_longer_than_it_can_hold(stock_model: Path, tmp_path: Path) -> None:
    """The length limit counts characters, not BPE or sentencepiece tokens: a short crop of
    a random stock-shaped model (which never stops by itself) ends within its limit."""
    settings = _settings(stock_model, tmp_path).model_copy(update={"max_new_tokens": 60})
    rec = load_recognizer(settings)
    assert rec.token_chars is not None and int(rec.token_chars.max()) > 1
    crops = [_line(60, "ab"), _line(120, "abc")]
    limits = length_limits([prepare_line(c) for c in crops], 60)
    assert max(limits) < 60
    for read, limit in zip(line_reader(rec)(crops), limits, strict=True):
        assert read is not None and len(read.text) <= limit


def test_labels_follow_the_models_own_tokens(stock_model: Path) -> None:
    """Training labels are what the stock model writes after its start token </s>:
    <s>, the text's tokens, </s>; padding is -100."""
    from transformers import AutoProcessor

    from worker.recognition.loading import load_model

    model, processor = load_model(str(stock_model)), AutoProcessor.from_pretrained(stock_model)
    enc = LineEncoding.of(model, processor)
    assert (enc.height, enc.width, enc.channels, enc.start_token_id) == (384, 384, 3, 2)
    tok = processor.tokenizer
    a, b = enc.sample(_line(200), "Dear Sir"), enc.sample(_line(300), "Dear Sir, thank you")
    assert a["labels"][0] == tok.bos_token_id == 0 and a["labels"][-1] == tok.eos_token_id == 2
    assert tok.decode(a["labels"], skip_special_tokens=True) == "Dear Sir"
    assert a["pixel_values"].shape == (3, 384, 384)
    batch = collate([a, b])
    assert batch["labels"].shape[1] == len(b["labels"])
    assert (batch["labels"][0, len(a["labels"]) :] == -100).all()


@pytest.mark.slow
def test_train_from_a_stock_shape_and_reload(stock_model: Path, tmp_path: Path) -> None:
    """`htrq train --init <stock shape>` runs a few steps (no CTC: the patches are a square
    grid) and exports a model that keeps </s> as its start token and reads again."""
    import json

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "htrq.cli", "train", "--init", str(stock_model),
         "--out", str(out), "--export", str(out / "best"), "--steps", "3", "--eval-every", "3",
         "--save-every", "3", "--batch-size", "2", "--warmup", "1", "--lr", "1e-3",
         "--precision", "fp32", "--workers", "0", "--threads", "1", "--curriculum-steps", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CTC off" in proc.stderr
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["decoder_start_token_id"] == 2
    assert not (out / "best" / "ctc_head.safetensors").exists()
    rec = load_recognizer(_settings(out / "best", tmp_path))
    (read,) = line_reader(rec)([_line(300)])
    assert isinstance(read[0], str)


@pytest.mark.slow
def test_htrq_eval_reads_a_folder_with_a_stock_shape(stock_model: Path, tmp_path: Path) -> None:
    """`htrq eval --model <stock shape>` reports CER for greedy and beams."""
    write_lines_tsv([(_line(300, "Dear Sir"), "Dear Sir"), (_line(200, "Yours"), "Yours")],
                    tmp_path / "lines")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "htrq.cli", "eval", str(tmp_path / "lines"), "--model",
         str(stock_model), "--beams", "1,2", "--batch-size", "2", "--max-new-tokens", "12"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if " CER=" in ln]
    assert len(rows) == 2 and "beams=1" in rows[0] and "beams=2" in rows[1]


def test_a_square_input_is_read_at_one_width_whatever_the_setting(
    stock_model: Path, tmp_path: Path
) -> None:
    """Widths mean nothing to a model that squashes every line to a square: it reads once,
    and the provenance says so."""
    settings = _settings(stock_model, tmp_path).model_copy(update={"stretches": "0.85,1,1.15"})
    rec = load_recognizer(settings)
    assert rec.stretches == (1.0,)
    assert read_by(settings, rec.path, rec.ctc_weight, rec.stretches).decoding["stretches"] == "1"
