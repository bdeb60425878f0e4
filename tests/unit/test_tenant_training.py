"""A tenant model's data split and its storage as one blob, without a database."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from htrq.storage import BlobMissing, DirectoryStore
from htrq.storage.folders import get_folder, put_folder
from worker.training.tenant import split_jobs


def _lines(folder: Path, sizes: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lines.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["file", "text", "writer_or_document"])
        for job, n in sizes.items():
            for i in range(n):
                w.writerow([f"{job}-{i}.png", f"line {i}", job])
    return folder


def test_whole_jobs_are_held_out_smallest_first_until_a_tenth(tmp_path: Path) -> None:
    """At least 10% of the lines, whole jobs only, the smallest first; the rest trains."""
    split = split_jobs(_lines(tmp_path, {"a": 40, "b": 4, "c": 30, "d": 6, "e": 20}))
    assert split.heldout_jobs == ["b", "d"]  # 4 + 6 = 10 of 100
    assert len(split.heldout) == 10 and len(split.train) == 90
    assert not {p.name.split("-")[0] for p, _ in split.train} & {"b", "d"}
    # Three lines short of a tenth after the two smallest: the next smallest goes too.
    split = split_jobs(_lines(tmp_path / "2", {"a": 40, "b": 3, "c": 30, "d": 4, "e": 23}))
    assert split.heldout_jobs == ["b", "d", "e"]


def test_one_job_is_always_held_out_and_one_always_trains(tmp_path: Path) -> None:
    """Two jobs: the smaller is held out whatever its share; the larger trains."""
    split = split_jobs(_lines(tmp_path, {"big": 50, "small": 20}))
    assert split.heldout_jobs == ["small"]
    assert len(split.train) == 50 and len(split.heldout) == 20


def test_a_folder_is_one_blob_with_a_key_its_files_decide(tmp_path: Path) -> None:
    """The same files give the same key; unpacked, they come back byte for byte."""
    store = DirectoryStore(tmp_path / "blobs")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    key = put_folder(store, model)
    assert put_folder(store, model) == key
    back = get_folder(store, key, tmp_path / "back")
    assert (back / "config.json").read_text() == "{}"
    assert (back / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 10
    store.delete(key)
    with pytest.raises(BlobMissing):
        get_folder(store, key, tmp_path / "again")


def test_a_model_s_default_steps_are_passes_over_its_lines() -> None:
    """Without steps in the request or HTRQ_TRAIN_STEPS, a training makes HTRQ_TRAIN_EPOCHS
    passes over its lines (a hundred lines get fewer steps than a thousand), within
    HTRQ_TRAIN_MAX_STEPS; HTRQ_TRAIN_STEPS, where set, is what create_model uses instead."""
    from htrq.settings import Settings
    from htrq.tenant_models import default_steps

    settings = Settings(train_epochs=24, train_batch_size=16, train_max_steps=1000)
    assert default_steps(settings, 100) == 150
    assert default_steps(settings, 300) == 450
    assert default_steps(settings, 1000) == 1000  # 1,500 passes' worth, capped
    assert default_steps(settings.model_copy(update={"train_epochs": 0.01}), 50) == 1
