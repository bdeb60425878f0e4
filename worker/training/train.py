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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)
from transformers.trainer_utils import get_last_checkpoint

from worker.recognition.ctc_prefix import load_ctc_head
from worker.recognition.line_encoder import column_states, reads_columns
from worker.recognition.loading import load_model
from worker.training.build import (
    DESIGNS,
    build_model,
    save,
    set_special_tokens,
)
from worker.training.data import (
    Curriculum,
    FixedLines,
    LineEncoding,
    LineSource,
    LineStream,
    collate,
    render_eval_set,
)
from worker.training.error_rates import cer
from worker.training.synth import load_fonts, split_fonts
from worker.training.writers import Collection, split_collection

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out_dir: Path
    export_dir: Path | None = None
    init: str = "scratch"  #: "scratch" or a checkpoint (directory or hub id) to fine-tune
    #: The shape a model from scratch takes (``worker.training.build.DESIGNS``).
    design: str = "vit32"
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
    val_lines: int = 200  #: synthetic validation lines, drawn with held-out fonts
    #: Real ``lines.tsv`` folders and their sampling weights, relative to ``synthetic_weight``
    #: (``[(hooker, 0.4), (copiste, 0.3)]`` with ``synthetic_weight=0.3``: 30% synthetic).
    lines: list[tuple[Path, float]] = field(default_factory=list)
    synthetic_weight: float = 1.0  #: 0 trains on the real folders only
    #: Lines of held-out writers validated per real folder (whole writers are held out until
    #: this many lines are out; they never reach training).
    val_real_lines: int = 120
    #: Scan augmentation of real lines (``augment_scan``); 0 shows them as they are.
    augment: float = 1.0
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
    #: Steps for which only a conv stem learns (``htrq graft-stem``): a new stem under trained
    #: layers first learns to feed them, before its random output can pull them astray.
    stem_only_steps: int = 0
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


class _StemFirst(TrainerCallback):
    """Keeps every gradient but the conv stem's out of the optimizer for the first steps
    (a parameter whose gradient is None is skipped by AdamW, weight decay included)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if model is None or state.global_step >= self.steps:
            return
        for name, param in model.named_parameters():
            if not name.startswith("encoder.stem."):
                param.grad = None


class HybridTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` whose training loss may add CTC on the encoder (``ctc_weight``)."""

    def __init__(
        self,
        *args,
        eval_max_tokens: int = 64,
        ctc_weight: float = 0.0,
        ctc_head_warmup: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eval_max_tokens = eval_max_tokens
        self.ctc_weight = ctc_weight
        self.ctc_head_warmup = ctc_head_warmup

    def evaluate(self, *args, **gen_kwargs):
        # Room for the longest validation label and a little more. ``max_new_tokens`` rather
        # than the arguments' ``generation_max_length``: the model's generation config sets
        # max_new_tokens, which would win and could pass a small decoder's last position.
        positions = self.model.config.decoder.max_position_embeddings
        gen_kwargs.setdefault("max_new_tokens", min(self.eval_max_tokens, positions - 1))
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


def one_patch_row(model) -> bool:
    """Whether the encoder's outputs are the line's columns left to right (see
    ``worker.recognition.line_encoder.reads_columns``): only then can CTC align them with the
    text."""
    return reads_columns(model)


def ctc_loss(model, encoded: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CTC between the encoder's columns (without ViT's [CLS]) and the characters.

    The pad token doubles as the CTC blank: it never occurs inside a label.
    """
    columns = column_states(model, encoded)
    logp = model.ctc_head(columns).log_softmax(-1).transpose(0, 1).float()
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


def group_cer(refs: list[str], hyps: list[str], groups: list[str]) -> dict[str, float]:
    """CER of each validation group (``cer_<group>``) and their unweighted mean (``cer``),
    which picks the best model: each collection of hands counts the same, however many
    lines it has."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = {
        f"cer_{g}": cer([refs[i] for i in idx], [hyps[i] for i in idx])
        for g, idx in members.items()
    }
    out["cer"] = sum(out.values()) / len(out)
    return out


def writable(tok: Any) -> Callable[[str], bool]:
    """Whether the tokenizer writes a text without ``<unk>`` (byte-level BPE always does)."""
    unk = tok.unk_token_id

    def check(text: str) -> bool:
        return unk is None or unk not in tok(text, add_special_tokens=False).input_ids

    return check


def spread(pairs: tuple[tuple[Path, str], ...], n: int) -> list[tuple[Path, str]]:
    """At most ``n`` lines spread evenly over ``pairs`` (every writer held out is seen)."""
    if len(pairs) <= n:
        return list(pairs)
    return [pairs[i * len(pairs) // n] for i in range(n)]


def _record_split(out_dir: Path, collections: list[Collection]) -> None:
    """Write which writers each real folder held out, so that a figure can be checked."""
    split = {
        c.name: {
            "train_lines": len(c.train),
            "val_lines": len(c.val),
            "skipped_lines": c.skipped,
            "val_writers": list(c.val_writers),
        }
        for c in collections
    }
    (out_dir / "val_split.json").write_text(json.dumps(split, indent=2, ensure_ascii=False) + "\n")
    for c in collections:
        log.info(
            "%s: %d training lines, %d held out (%d writers), %d skipped for characters",
            c.name,
            len(c.train),
            len(c.val),
            len(c.val_writers),
            c.skipped,
        )


def attach_ctc_head(model, init: str, vocab: int) -> bool:
    """Give ``model`` a CTC head; True when its trained weights came with ``init``."""
    saved = load_ctc_head(init)
    model.ctc_head = saved or torch.nn.Linear(model.config.encoder.hidden_size, vocab)
    return saved is not None


def load_start(init: str, design: str = "vit32"):
    if init == "scratch":
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {sorted(DESIGNS)}, not {design!r}")
        return build_model(DESIGNS[design])
    model = load_model(init)
    processor = AutoProcessor.from_pretrained(init)
    # A trained model keeps the token ids it was trained with (stock TrOCR starts from
    # </s>, not <s>); only ids it lacks are filled in from its tokenizer.
    set_special_tokens(model, processor.tokenizer, keep=True)
    return model, processor


_SCHEDULES = {"cosine": "cosine", "constant": "constant_with_warmup"}


def stream_args(*, precision: str, seed: int, **specific: Any) -> Seq2SeqTrainingArguments:
    """Training arguments for a model trained on a ``LineStream`` (``htrq train`` and a
    tenant's fine-tune): what both share, and ``specific`` (steps, rates, batch, saving)."""
    cuda = torch.cuda.is_available()
    bf16 = use_bf16(precision, cuda)
    return Seq2SeqTrainingArguments(
        weight_decay=0.01,
        max_grad_norm=1.0,
        save_strategy="steps",
        logging_steps=50,
        # Pinned memory only speeds copies to a GPU (torch warns when there is none).
        dataloader_pin_memory=cuda,
        # A stream has no epochs to skip through on resume; the step counter drives the data.
        ignore_data_skip=True,
        bf16=bf16,
        # transformers refuses bf16 without a GPU unless told the CPU is meant.
        use_cpu=bf16 and not cuda,
        report_to="none",
        seed=seed,
        remove_unused_columns=False,
        **specific,
    )


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
    model, processor = load_start(last or cfg.init, cfg.design)
    tok = processor.tokenizer
    encoding = LineEncoding.of(model, processor)
    head_warmup = 0
    ctc_weight = cfg.ctc_weight if one_patch_row(model) else 0.0
    if cfg.ctc_weight and not ctc_weight:
        log.warning("CTC off: the encoder's patches are not one left-to-right row")
    if ctc_weight and not attach_ctc_head(model, cfg.init, len(tok)) and cfg.init != "scratch":
        # A trained model with a new head: the head learns first. Counted in global steps, so
        # a resume restores the head from its checkpoint and carries on where warm-up was.
        head_warmup = cfg.ctc_head_warmup

    train_fonts, held_fonts = split_fonts(load_fonts())
    # The split seed is fixed, not cfg.seed: a run with another seed must validate on the
    # same writers for its figures to compare.
    collections = [
        split_collection(folder, writable=writable(tok), val_lines=cfg.val_real_lines, seed=0)
        for folder, _ in cfg.lines
    ]
    _record_split(cfg.out_dir, collections)
    sources = [
        LineSource(c.name, c.train, weight)
        for c, (_, weight) in zip(collections, cfg.lines, strict=True)
    ]
    stream = LineStream(
        encoding,
        seed=cfg.seed,
        curriculum=Curriculum(ramp_steps=cfg.curriculum_steps),
        fonts=train_fonts,
        sources=sources,
        synthetic_weight=cfg.synthetic_weight,
        distort=cfg.distort,
        augment=cfg.augment,
    )
    samples = [
        (im, text, "synthetic")
        for im, text in render_eval_set(cfg.val_lines, held_fonts, seed=12345)
    ]
    for c in collections:
        for path, text in spread(c.val, cfg.val_real_lines):
            samples.append((Image.open(path).convert("L"), text, c.name))
    groups = [g for _, _, g in samples]
    val = FixedLines([(im, text) for im, text, _ in samples], encoding)
    longest_label = max(len(item["labels"]) for item in val.items)

    def metrics(pred) -> dict[str, float]:
        ids = pred.predictions
        labels = pred.label_ids
        labels[labels == -100] = tok.pad_token_id
        ids[ids == -100] = tok.pad_token_id
        hyps = tok.batch_decode(ids, skip_special_tokens=True)
        refs = tok.batch_decode(labels, skip_special_tokens=True)
        return group_cer(refs, hyps, groups)

    args = stream_args(
        precision=cfg.precision,
        seed=cfg.seed,
        output_dir=str(cfg.out_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup,
        lr_scheduler_type=_SCHEDULES[cfg.schedule],
        max_steps=cfg.steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_every,
        save_steps=cfg.save_every,
        save_total_limit=cfg.keep_checkpoints,
        predict_with_generate=True,
        generation_num_beams=1,
        dataloader_num_workers=cfg.workers,
        dataloader_persistent_workers=cfg.workers > 0,
    )
    trainer = HybridTrainer(
        eval_max_tokens=longest_label + 8,
        ctc_weight=ctc_weight,
        ctc_head_warmup=head_warmup,
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=stream,
        eval_dataset=val,
        processing_class=processor,
        compute_metrics=metrics,
        callbacks=[
            _Progress(stream, cfg.export_dir, processor),
            *([_StemFirst(cfg.stem_only_steps)] if cfg.stem_only_steps else []),
        ],
    )
    trainer.train(resume_from_checkpoint=last)
    return cfg.export_dir or cfg.out_dir
