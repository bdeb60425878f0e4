"""``htrq average``: the mean of checkpoints, written as a model the service loads."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import VisionEncoderDecoderModel

from htrq.cli import main
from worker.recognition.ctc_prefix import CTC_HEAD_FILE
from worker.training.average import average_checkpoints
from worker.training.build import build_tiny_model

PATCH = "encoder.embeddings.patch_embeddings.projection.weight"


@pytest.fixture
def two_checkpoints(tmp_path):
    """An exported model (head in its own file) and a Trainer checkpoint (head inside)."""
    export = build_tiny_model(tmp_path / "export")
    weights = load_file(export / "model.safetensors")
    save_file({"weight": torch.ones(5, 32), "bias": torch.zeros(5)}, export / CTC_HEAD_FILE)

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(export, ckpt, ignore=shutil.ignore_patterns("*.safetensors"))
    shifted = {k: v + 1.0 if v.is_floating_point() else v for k, v in weights.items()}
    shifted |= {"ctc_head.weight": torch.full((5, 32), 3.0), "ctc_head.bias": torch.ones(5)}
    save_file(shifted, ckpt / "model.safetensors", metadata={"format": "pt"})
    return export, ckpt, weights


def test_the_average_is_the_mean_of_the_weights_and_loads_as_a_model(tmp_path, two_checkpoints):
    export, ckpt, weights = two_checkpoints
    out = average_checkpoints([export, ckpt], tmp_path / "mean")

    model = VisionEncoderDecoderModel.from_pretrained(out)
    assert torch.allclose(model.state_dict()[PATCH], weights[PATCH] + 0.5)
    head = load_file(out / CTC_HEAD_FILE)
    assert torch.equal(head["weight"], torch.full((5, 32), 2.0))
    assert torch.equal(head["bias"], torch.full((5,), 0.5))
    assert (out / "tokenizer.json").exists()


def test_checkpoints_of_different_models_are_refused(tmp_path, two_checkpoints):
    export, _, _ = two_checkpoints
    other = tmp_path / "other"
    shutil.copytree(export, other)
    (other / CTC_HEAD_FILE).unlink()
    with pytest.raises(ValueError, match="different weights"):
        average_checkpoints([export, other], tmp_path / "mean")
    assert not (tmp_path / "mean" / "model.safetensors").exists()


def test_htrq_average_command(tmp_path, two_checkpoints, capsys):
    export, ckpt, weights = two_checkpoints
    assert main(["average", str(tmp_path / "mean"), str(export), str(ckpt)]) == 0
    assert str(tmp_path / "mean") in capsys.readouterr().out
    mean = load_file(tmp_path / "mean" / "model.safetensors")
    assert torch.allclose(mean[PATCH], weights[PATCH] + 0.5)
