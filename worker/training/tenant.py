"""A tenant model's fine-tune, pure: line folders in, a model folder out (no Celery and no
database; ``worker.training.trainer`` runs it for ``htrq trainer``).

The lines are the tenant's corrections cut as ``htrq corrections export`` cuts them, whose
``writer_or_document`` is the job. Whole jobs are held out (:func:`split_jobs`) so that the
held-out CER measures documents the model never saw, as the archive's next documents will
be. The fine-tune reads only the tenant's lines, augmented as scans vary
(``augment_scan``); ``Hooks`` is how the caller keeps its lease, stores checkpoints and
stops a training that was cancelled.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from worker.recognition.ctc_prefix import load_ctc_head
from worker.recognition.recognizer import Recognizer
from worker.training.build import save
from worker.training.data import (
    LineEncoding,
    LineSource,
    LineStream,
    collate,
    read_column,
    read_lines_tsv,
)
from worker.training.evaluate import evaluate
from worker.training.train import HybridTrainer, load_start, one_patch_row, stream_args, writable

log = logging.getLogger(__name__)

#: Share of the CTC loss while fine-tuning a model that ships a CTC head: the head keeps up
#: with the encoder, so that joint decoding still helps the tuned model.
CTC_WEIGHT = 0.3

Pair = tuple[Path, str]


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    augment: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    heldout: list[Pair]
    heldout_jobs: list[str]


def split_jobs(folder: Path, *, share: float = 0.1) -> Split:
    """Hold out whole jobs, the smallest first, until at least ``share`` of the lines are
    out; at least one job is held out and at least one trains (the largest)."""
    pairs = read_lines_tsv(folder)
    jobs = read_column(folder, "writer_or_document")
    by_job: dict[str, list[Pair]] = {}
    for pair, job in zip(pairs, jobs, strict=True):
        by_job.setdefault(job, []).append(pair)
    # Smallest jobs first (ties in an order fixed by their ids): the held-out share comes
    # as close to ``share`` as whole jobs allow, leaving training the most lines.
    order = sorted(by_job, key=lambda j: (len(by_job[j]), hashlib.sha256(j.encode()).hexdigest()))
    want = max(1, math.ceil(share * len(pairs)))
    held: list[str] = []
    for job in order[:-1]:  # the last job always trains
        if sum(len(by_job[j]) for j in held) >= want:
            break
        held.append(job)
    return Split(
        train=[p for j in order if j not in held for p in by_job[j]],
        heldout=[p for j in held for p in by_job[j]],
        heldout_jobs=sorted(held),
    )


class Hooks:
    """What a training tells its caller after each step: ``beat(step)`` (False: stop now,
    the claim is lost; called every step, so cheap), ``checkpoint(folder, step)`` (a
    checkpoint to keep; False: stop)."""

    def beat(self, step: int) -> bool:
        return True

    def checkpoint(self, folder: Path, step: int) -> bool:
        return True


class _Report(TrainerCallback):
    def __init__(self, hooks: Hooks, stream: LineStream) -> None:
        self.hooks, self.stream = hooks, stream
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.stream.step.value = state.global_step
        if not self.hooks.beat(state.global_step):
            self.stopped = control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not self.hooks.checkpoint(folder, state.global_step):
            self.stopped = control.should_training_stop = True


def fine_tune(
    *,
    base: Path,
    train: list[Pair],
    recipe: Recipe,
    work: Path,
    hooks: Hooks,
    checkpoint_every: int,
) -> Path | None:
    """Fine-tune the model in ``base`` on ``train``; return the tuned model's folder
    (``work/model``), or None when ``hooks`` stopped it. A checkpoint already in
    ``work/checkpoints`` (a resumed training) is where it goes on from."""
    out = work / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(out))
    model, processor = load_start(last or str(base))
    keep = writable(processor.tokenizer)
    pairs = [(p, t) for p, t in train if keep(t)]
    # A resume's head comes back with the checkpoint's weights (the trainer loads them into
    # the model, head included); the base's head is where it starts.
    head = load_ctc_head(base) if one_patch_row(model) else None
    if head is not None:
        model.ctc_head = head
    ctc = CTC_WEIGHT if head is not None else 0.0
    stream = LineStream(
        LineEncoding.of(model, processor),
        seed=recipe.seed,
        fonts=[],
        sources=[LineSource("tenant", tuple(pairs), 1.0)],
        synthetic_weight=0.0,
        augment=recipe.augment,
    )
    args = stream_args(
        precision="auto",
        seed=recipe.seed,
        output_dir=str(out),
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.lr,
        warmup_steps=recipe.warmup,
        lr_scheduler_type="cosine",
        max_steps=recipe.steps,
        eval_strategy="no",
        save_steps=checkpoint_every,
        save_total_limit=1,
        dataloader_num_workers=0,
    )
    report = _Report(hooks, stream)
    trainer = HybridTrainer(
        ctc_weight=ctc,
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=stream,
        processing_class=processor,
        callbacks=[report],
    )
    trainer.train(resume_from_checkpoint=last)
    if report.stopped:
        return None
    return save(model, processor, work / "model")


def measure(
    model: Path,
    pairs: list[Pair],
    *,
    num_beams: int,
    ctc_weight: float,
    max_new_tokens: int,
    device: str = "cpu",
) -> float:
    """The model's CER on ``pairs``, read as the service reads a ``mode=line`` page."""
    recognizer = Recognizer.load(
        model=str(model),
        device=device,
        num_beams=num_beams,
        ctc_weight=ctc_weight,
        max_new_tokens=max_new_tokens,
    )
    samples = [(Image.open(p).convert("L"), t) for p, t in pairs]
    return evaluate(recognizer, samples).cer
