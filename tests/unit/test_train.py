"""``htrq train`` end to end on a tiny model: export, resume, the CTC head and its warm-up."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, VisionEncoderDecoderModel

from worker.recognition.ctc_prefix import CTC_HEAD_FILE
from worker.training.build import build_tiny_model
from worker.training.data import collate, encode_label, to_pixels
from worker.training.train import TrainConfig, hybrid_loss, train, use_bf16

#: Seconds each (training loops): left out of the fast subset.
pytestmark = pytest.mark.slow


def _config(tmp_path: Path, init: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        out_dir=tmp_path / "run",
        export_dir=tmp_path / "best",
        init=str(init),
        steps=steps,
        batch_size=4,
        lr=1e-3,
        warmup=0,
        eval_every=2,
        save_every=2,
        keep_checkpoints=3,
        val_lines=6,
        curriculum_steps=0,
        workers=0,
        ctc_weight=0.4,
        precision="fp32",
    )


def test_train_exports_a_loadable_model_with_its_ctc_head_and_resumes(tmp_path):
    tiny = build_tiny_model(tmp_path / "tiny")
    best = train(_config(tmp_path, tiny, steps=4))

    state = json.loads((best / "training_state.json").read_text())
    assert state["step"] in (2, 4) and state["val_cer"] >= 0
    model = VisionEncoderDecoderModel.from_pretrained(best)  # a standard checkpoint
    assert not any(k.startswith("ctc_head") for k in model.state_dict())
    head = load_file(best / CTC_HEAD_FILE)
    vocab = len(AutoProcessor.from_pretrained(best).tokenizer)
    assert head["weight"].shape == (vocab, model.config.encoder.hidden_size)

    # Same out_dir, more steps: training carries on from step 4 instead of starting again.
    train(_config(tmp_path, tiny, steps=6))
    trainer_state = json.loads(
        (tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text()
    )
    steps_logged = [e["step"] for e in trainer_state["log_history"] if "eval_cer" in e]
    assert steps_logged == [2, 4, 6]
    kept = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert kept == [2, 4, 6]  # keep_checkpoints=3, for htrq average


def test_fine_tuning_from_an_export_starts_with_its_trained_ctc_head(tmp_path):
    from worker.training.train import attach_ctc_head

    tiny = build_tiny_model(tmp_path / "tiny")
    best = train(_config(tmp_path, tiny, steps=2))
    model = VisionEncoderDecoderModel.from_pretrained(best)
    assert attach_ctc_head(model, str(best), len(AutoProcessor.from_pretrained(best).tokenizer))
    saved = load_file(best / CTC_HEAD_FILE)
    assert torch.equal(model.ctc_head.weight, saved["weight"])
    assert not attach_ctc_head(VisionEncoderDecoderModel.from_pretrained(tiny), str(tiny), 197)


def test_a_new_ctc_head_keeps_its_gradient_out_of_the_encoder_while_it_warms_up(tmp_path):
    """In warm-up the encoder learns from cross-entropy alone; afterwards CTC reaches it."""
    from PIL import Image

    tiny = build_tiny_model(tmp_path / "tiny")
    model = VisionEncoderDecoderModel.from_pretrained(tiny)
    tok = AutoProcessor.from_pretrained(tiny).tokenizer
    model.ctc_head = torch.nn.Linear(model.config.encoder.hidden_size, len(tok))
    line = Image.new("L", (200, 40), 255)
    line.paste(0, (10, 12, 190, 28))
    batch = collate(
        [
            {"pixel_values": to_pixels(line, 16, 128), "labels": encode_label(tok, t)}
            for t in ("ab", "cde")
        ]
    )

    def encoder_grad(weight: float, head_only: bool) -> torch.Tensor:
        model.zero_grad()
        outputs = model(**batch)
        hybrid_loss(model, outputs, batch["labels"], weight, head_only=head_only).backward()
        assert model.ctc_head.weight.grad.abs().sum() > 0 or weight == 0
        return model.encoder.embeddings.patch_embeddings.projection.weight.grad.clone()

    cross_entropy_only = encoder_grad(0.0, head_only=False)
    assert torch.allclose(encoder_grad(0.4, head_only=True), 0.6 * cross_entropy_only, atol=1e-7)
    assert not torch.allclose(encoder_grad(0.4, head_only=False), 0.6 * cross_entropy_only)


def test_precision_is_fp32_on_a_cpu_unless_asked_for():
    assert use_bf16("auto", cuda=False) is False
    assert use_bf16("bf16", cuda=False) is True
    assert use_bf16("fp32", cuda=True) is False
    with pytest.raises(ValueError, match="precision"):
        use_bf16("fp16", cuda=False)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_constant_schedule_keeps_the_rate_where_cosine_anneals_it(tmp_path, schedule):
    """``--schedule constant`` (for checkpoint averaging) holds the rate at ``lr`` after
    warm-up; cosine has halved it half way through the run."""
    tiny = build_tiny_model(tmp_path / "tiny")
    cfg = _config(tmp_path, tiny, steps=4)
    train(replace(cfg, schedule=schedule, eval_every=2, save_every=2))
    sched = torch.load(tmp_path / "run" / "checkpoint-2" / "scheduler.pt", weights_only=False)
    want = cfg.lr if schedule == "constant" else cfg.lr / 2
    assert sched["_last_lr"] == [pytest.approx(want)] * len(sched["_last_lr"])


def test_an_unknown_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        train(replace(_config(tmp_path, tmp_path, steps=1), schedule="linear"))
