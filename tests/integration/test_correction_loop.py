"""``bench/correction_loop.py`` runs end to end: a tiny collection of three letters, the tiny
model and a few training steps (the figures mean nothing; that it runs is what is known)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.training.data import read_lines_tsv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
HELD_OUT = ROOT / "tests" / "resources" / "heldout-lines"


def _collection(folder: Path, letters: int, lines: int) -> Path:
    """The first ``letters * lines`` held-out lines as letters of ``lines`` lines each."""
    folder.mkdir()
    pairs = read_lines_tsv(HELD_OUT)[: letters * lines]
    with open(folder / "lines.tsv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        w.writerow(["file", "text", "writer_or_document"])
        for i, (path, text) in enumerate(pairs):
            shutil.copy(path, folder / path.name)
            w.writerow([path.name, text, f"letter-{i // lines}"])
    return folder


def test_the_correction_loop_runs_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """Submit, read, correct 4 lines, export, train 2 steps, read the unseen letter before and
    after: the bench prints its figures, and the export and the trained model are there."""
    collection = _collection(tmp_path / "archive", letters=3, lines=3)
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "correction_loop.py"),
         "--collection", str(collection), "--model", str(tiny_model), "--correct", "4",
         "--unseen-share", "0.34", "--steps", "2", "--batch-size", "2", "--warmup", "1",
         "--val-real-lines", "1", "--threads", "1", "--num-beams", "1",
         "--max-new-tokens", "6", "--train-args", "--precision fp32", "--work", str(work),
         "--json"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (figures["letters_corrected_from"], figures["letters_unseen"]) == (2, 1)
    assert figures["unseen_lines"] == 3 and figures["pages_read"] == 6
    assert figures["corrected"] + figures["confirmed"] == 4 == figures["exported"]
    assert figures["steps"] == 2 and figures["train_minutes"] > 0
    assert figures["cer_unseen_before"] >= 0 and figures["cer_unseen_after"] >= 0
    exported = read_lines_tsv(work / "corrections")
    truths = {t for _, t in read_lines_tsv(collection)}
    assert len(exported) == 4 and all(t in truths for _, t in exported)
    assert (work / "run" / "best" / "config.json").exists()
