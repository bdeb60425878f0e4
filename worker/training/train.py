"""Train or fine-tune a VisionEncoderDecoder line model with ``Seq2SeqTrainer``.

Starts from scratch (the shipped shape) or from any checkpoint ``from_pretrained`` can load
(a local directory, or ``microsoft/trocr-*`` where the hub is reachable). Data: endless
synthetic lines, optionally mixed with ``lines.tsv`` folders. Validation CER on lines rendered
with held-out fonts is computed every ``eval_every`` steps, and each new best model is
exported (model, processor, tokenizer) to ``export_dir``. Re-running with the same
``out_dir`` resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    VisionEncoderDecoderModel,
)
from transformers.trainer_utils import get_last_checkpoint

from worker.ctc_prefix import load_ctc_head
from worker.training.build import (
    ModelShape,
    build_model,
    save,
    set_special_tokens,
)
from worker.training.data import (
    Curriculum,
    FixedLines,
    LineStream,
    collate,
    read_lines_tsv,
    render_eval_set,
)
from worker.training.metrics import cer
from worker.training.synth import load_fonts, split_fonts

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out_dir: Path
    export_dir: Path | None = None
    init: str = "scratch"  #: "scratch" or a checkpoint (directory or hub id) to fine-tune
    steps: int = 30000
    batch_size: int = 24
    lr: float = 5e-4
    warmup: int = 400
    #: "cosine" (annealed to 0 at ``steps``) or "constant" (the rate stays at ``lr`` after
    #: warm-up, so that checkpoints lie apart and their mean, ``htrq average``, gains most).
    schedule: str = "cosine"
    eval_every: int = 250
    save_every: int = 250
    #: Checkpoints kept in ``out_dir`` (the newest; more to average with ``htrq average``).
    keep_checkpoints: int = 2
    val_lines: int = 200
    synthetic: bool = True
    lines: list[Path] = field(default_factory=list)
    real_fraction: float = 0.5  #: share of samples from ``lines`` when synthetic data is on too
    curriculum_steps: int = 3000
    workers: int = 1
    seed: int = 0
    #: Weight of an auxiliary CTC loss on the encoder's outputs (0 turns it off). It makes the
    #: encoder align characters left to right from the first steps, which gets the decoder off
    #: the language-model plateau far sooner; the head is dropped from exported models.
    ctc_weight: float = 0.0
    #: Steps for which a CTC head that starts untrained learns on the encoder's outputs without
    #: passing its gradient back. A random head's gradient scrambles a trained encoder: 80
    #: steps from the shipped model at lr 5e-5 took validation CER from 0.076 to 0.142 with
    #: it, 0.080 without CTC.
    ctc_head_warmup: int = 300
    #: Bend strokes and vary the pen in synthetic training lines (``LineRenderer.distort``).
    distort: bool = True
    #: "auto" (bf16 on a CUDA GPU that supports it, else fp32), "fp32" or "bf16". On a CPU,
    #: bf16 autocast pays only where the cores have bf16 instructions: measured 2x faster per
    #: step on a Zen 5 EPYC (AVX512_BF16), 1.3-3x slower on a Xeon without them.
    precision: str = "auto"


class _Progress(TrainerCallback):
    """Feeds the global step to the data stream (curriculum) and exports each best model."""

    def __init__(self, stream: LineStream, export_dir: Path | None, processor) -> None:
        self.stream, self.export_dir, self.processor = stream, export_dir, processor
        self.best = float("inf")

    def on_step_end(self, args, state, control, **kw):
        self.stream.step.value = state.global_step

    def on_train_begin(self, args, state, control, **kw):
        self.stream.step.value = state.global_step
        if self.export_dir and (self.export_dir / "training_state.json").exists():
            self.best = json.loads((self.export_dir / "training_state.json").read_text())["val_cer"]

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        val = (metrics or {}).get("eval_cer")
        if val is None or self.export_dir is None or model is None or val >= self.best:
            return
        self.best = val
        save(model, self.processor, self.export_dir)
        (self.export_dir / "training_state.json").write_text(
            json.dumps({"step": state.global_step, "val_cer": val}, indent=2) + "\n"
        )
        log.info(
            "exported best model (val CER %.4f at step %d) to %s",
            val,
            state.global_step,
            self.export_dir,
        )


class HybridTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` whose training loss may add CTC on the encoder (``ctc_weight``)."""

    def __init__(self, *args, ctc_weight: float = 0.0, ctc_head_warmup: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctc_weight = ctc_weight
        self.ctc_head_warmup = ctc_head_warmup

    def evaluate(self, *args, **gen_kwargs):
        # Validation lines hold at most 48 characters. ``max_new_tokens`` rather than the
        # arguments' ``generation_max_length``: the model's generation config sets
        # max_new_tokens, which would win and could pass a small decoder's last position.
        positions = self.model.config.decoder.max_position_embeddings
        gen_kwargs.setdefault("max_new_tokens", min(64, positions) - 1)
        return super().evaluate(*args, **gen_kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if self.ctc_weight and model.training:
            loss = hybrid_loss(
                model,
                outputs,
                inputs["labels"],
                self.ctc_weight,
                head_only=self.state.global_step < self.ctc_head_warmup,
            )
        return (loss, outputs) if return_outputs else loss


def hybrid_loss(model, outputs, labels: torch.Tensor, ctc_weight: float, *, head_only: bool):
    """Cross-entropy mixed with CTC on the encoder; ``head_only`` keeps CTC's gradient in its
    head, out of the encoder."""
    encoded = outputs.encoder_last_hidden_state
    if head_only:
        encoded = encoded.detach()
    return (1 - ctc_weight) * outputs.loss + ctc_weight * ctc_loss(model, encoded, labels)


def ctc_loss(model, encoded: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CTC between the encoder's patch sequence (without ViT's [CLS]) and the characters.

    The pad token doubles as the CTC blank: it never occurs inside a label.
    """
    logp = model.ctc_head(encoded[:, 1:]).log_softmax(-1).transpose(0, 1).float()
    keep = (labels >= 0) & (labels != model.config.eos_token_id)
    steps, batch = logp.shape[0], logp.shape[1]
    return torch.nn.functional.ctc_loss(
        logp,
        labels[keep],
        torch.full((batch,), steps, dtype=torch.long),
        keep.sum(1),
        blank=model.config.pad_token_id,
        zero_infinity=True,
    )


def attach_ctc_head(model, init: str, vocab: int) -> bool:
    """Give ``model`` a CTC head; True when its trained weights came with ``init``."""
    saved = load_ctc_head(init)
    model.ctc_head = saved or torch.nn.Linear(model.config.encoder.hidden_size, vocab)
    return saved is not None


def load_start(init: str):
    if init == "scratch":
        return build_model(ModelShape())
    model = VisionEncoderDecoderModel.from_pretrained(init, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(init)
    set_special_tokens(model, processor.tokenizer)
    return model, processor


def input_shape(model, processor) -> tuple[int, int, int]:
    size = processor.image_processor.size
    return size["height"], size["width"], model.config.encoder.num_channels


_SCHEDULES = {"cosine": "cosine", "constant": "constant_with_warmup"}


def use_bf16(precision: str, cuda: bool) -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "auto":
        return cuda and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def train(cfg: TrainConfig) -> Path:
    """Run training; return the directory holding the best exported model."""
    if cfg.schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(_SCHEDULES)}, not {cfg.schedule!r}")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(cfg.out_dir))
    model, processor = load_start(last or cfg.init)
    tok = processor.tokenizer
    height, width, channels = input_shape(model, processor)
    head_warmup = 0
    if cfg.ctc_weight and not attach_ctc_head(model, cfg.init, len(tok)) and cfg.init != "scratch":
        # A trained model with a new head: the head learns first. Counted in global steps, so
        # a resume restores the head from its checkpoint and carries on where warm-up was.
        head_warmup = cfg.ctc_head_warmup

    train_fonts, held_fonts = split_fonts(load_fonts())
    real = [pair for d in cfg.lines for pair in read_lines_tsv(d)]
    if not cfg.synthetic and not real:
        raise ValueError("no training data: give --lines folders or leave synthetic data on")
    stream = LineStream(
        tok,
        height=height,
        width=width,
        channels=channels,
        seed=cfg.seed,
        curriculum=Curriculum(ramp_steps=cfg.curriculum_steps),
        fonts=train_fonts,
        real=real,
        real_fraction=1.0 if not cfg.synthetic else cfg.real_fraction,
        distort=cfg.distort,
    )
    val = FixedLines(
        render_eval_set(cfg.val_lines, held_fonts, seed=12345),
        tok,
        height=height,
        width=width,
        channels=channels,
    )

    def metrics(pred) -> dict[str, float]:
        ids = pred.predictions
        labels = pred.label_ids
        labels[labels == -100] = tok.pad_token_id
        ids[ids == -100] = tok.pad_token_id
        hyps = tok.batch_decode(ids, skip_special_tokens=True)
        refs = tok.batch_decode(labels, skip_special_tokens=True)
        return {"cer": cer(refs, hyps)}

    cuda = torch.cuda.is_available()
    bf16 = use_bf16(cfg.precision, cuda)
    args = Seq2SeqTrainingArguments(
        output_dir=str(cfg.out_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup,
        lr_scheduler_type=_SCHEDULES[cfg.schedule],
        weight_decay=0.01,
        max_grad_norm=1.0,
        max_steps=cfg.steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=cfg.keep_checkpoints,
        logging_steps=50,
        predict_with_generate=True,
        generation_num_beams=1,
        dataloader_num_workers=cfg.workers,
        dataloader_persistent_workers=cfg.workers > 0,
        # A stream has no epochs to skip through on resume; the step counter drives the data.
        ignore_data_skip=True,
        bf16=bf16,
        # transformers refuses bf16 without a GPU unless told the CPU is meant.
        use_cpu=bf16 and not cuda,
        report_to="none",
        seed=cfg.seed,
        remove_unused_columns=False,
    )
    trainer = HybridTrainer(
        ctc_weight=cfg.ctc_weight,
        ctc_head_warmup=head_warmup,
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=stream,
        eval_dataset=val,
        processing_class=processor,
        compute_metrics=metrics,
        callbacks=[_Progress(stream, cfg.export_dir, processor)],
    )
    trainer.train(resume_from_checkpoint=last)
    return cfg.export_dir or cfg.out_dir
