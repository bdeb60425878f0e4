"""``htrq trainer``: trains tenant models, one at a time, from its own Celery queue.

The task is thin: it claims the model (``htrq.tenant_models.lifecycle``) and hands
:func:`run_training` a claim. That cuts the tenant's checked lines as ``htrq corrections
export`` does, holds out whole jobs, measures the base on them, fine-tunes
(``worker.training.tenant``), measures the result and stores it in the blob store, so that a
worker on any machine loads it. While it trains it beats every few seconds (the lease) and
sends a checkpoint every ``HTRQ_TRAIN_CHECKPOINT_EVERY`` steps to the store. A trainer that
dies leaves the lease to run out; a sweeper (each trainer has one, as each page worker has)
sends the model again, and the next claim goes on from the last checkpoint, or fails the
model after ``HTRQ_TRAIN_MAX_ATTEMPTS`` claims.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, signals
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import make_engine, make_sessions
from htrq.errors import public_message
from htrq.queue import TRAIN_MODEL, TRAINER_QUEUE, CelerySender, make_celery
from htrq.settings import Settings
from htrq.storage import BlobMissing, BlobStore, open_store
from htrq.storage.folders import get_folder, put_folder
from htrq.tenant_models import HELDOUT_SHARE, lifecycle
from htrq.tenant_models.lifecycle import TrainingClaim
from worker.recognition.provenance import weights_digest
from worker.recognition.recognizer import resolve_model
from worker.training.reviewed_lines import export_corrections
from worker.training.tenant import Hooks, Recipe, fine_tune, measure, split_jobs

log = logging.getLogger(__name__)

#: Seconds between heartbeats (at most a third of the lease).
BEAT_EVERY = 5.0


@dataclass
class TrainerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: BlobStore
    #: Where trainings unpack their lines, base and checkpoints (a temporary folder each).
    scratch: Path | None = None


class _Lease(Hooks):
    """Keeps the claim alive from a thread of its own for the whole attempt (the export,
    the measurements and the upload too, not only the steps), stores checkpoints, and says
    stop once the claim is lost (the model was cancelled, or another trainer took it over)."""

    def __init__(self, ctx: TrainerContext, claim: TrainingClaim) -> None:
        self.ctx, self.claim, self.step = ctx, claim, claim.step
        self.lost, self.stopping = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="htrq-lease", daemon=True)

    def __enter__(self) -> _Lease:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        lease = self.ctx.settings.train_lease_seconds
        while not self.stopping.wait(min(BEAT_EVERY, lease / 3)):
            try:
                kept = lifecycle.heartbeat(
                    self.ctx.sessions, self.claim, step=self.step, lease=lease
                )
            except Exception:
                # The database is away: beat again; if it stays away past the lease, another
                # trainer takes over and this one's writes are refused.
                log.warning("model %s: heartbeat failed", self.claim.model_id, exc_info=True)
                continue
            if not kept:
                self.lost.set()
                return

    def beat(self, step: int) -> bool:
        self.step = step
        return not self.lost.is_set()

    def checkpoint(self, folder: Path, step: int) -> bool:
        key = put_folder(self.ctx.storage, folder)
        return lifecycle.checkpoint(
            self.ctx.sessions, self.ctx.storage, self.claim, key=key, step=step
        )


def train_model(model_id: str, ctx: TrainerContext) -> None:
    """Claim the model and train it (what the task does); nothing when another trainer holds
    it or its training has ended."""
    s = ctx.settings
    claim = lifecycle.claim(
        ctx.sessions, model_id, lease=s.train_lease_seconds, max_attempts=s.train_max_attempts
    )
    if claim is None:
        log.info("model %s: nothing to train (ended, cancelled or held by another)", model_id)
        return
    work = Path(tempfile.mkdtemp(prefix=f"htrq-train-{claim.model_id}-", dir=ctx.scratch))
    try:
        with _Lease(ctx, claim) as lease:
            run_training(claim, ctx, work, lease)
    except Exception as exc:
        # Left `training` with the lease ended: the sweeper sends it again and the next claim
        # tries again (counted), from the last checkpoint.
        log.exception("model %s: training attempt %d failed", claim.model_id, claim.token)
        if isinstance(exc, BlobMissing):
            lifecycle.fail(
                ctx.sessions,
                ctx.storage,
                claim,
                code="training_failed",
                message="the base model is no longer stored; train from `builtin`",
            )
        else:
            lifecycle.give_up(ctx.sessions, claim, error=public_message(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_training(claim: TrainingClaim, ctx: TrainerContext, work: Path, lease: _Lease) -> None:
    """One training attempt, from the lines to the stored model."""
    s = ctx.settings
    lines = work / "lines"
    export_corrections(
        sessions=ctx.sessions,
        storage=ctx.storage,
        settings=s,
        out=lines,
        tenant=claim.tenant,
        since=claim.lines_since,
    )
    split = split_jobs(lines, share=HELDOUT_SHARE)
    if len(split.train) + len(split.heldout) < s.train_min_lines or not split.heldout:
        lifecycle.fail(
            ctx.sessions,
            ctx.storage,
            claim,
            code="too_few_lines",
            message=f"only {len(split.train) + len(split.heldout)} lines could be cut from "
            "the pages (their files may have been deleted); correct more lines",
        )
        return
    if lease.lost.is_set():
        return
    base = _base(claim, ctx, work)
    # Measured as the service reads: the deployment's beams, CTC weight and length limit.
    decoding = functools.partial(
        measure,
        num_beams=s.num_beams,
        ctc_weight=s.ctc_weight,
        max_new_tokens=s.max_new_tokens,
        device=s.device,
    )
    base_cer = decoding(base, split.heldout)
    if not lifecycle.record(
        ctx.sessions,
        claim,
        train_lines=len(split.train),
        heldout_lines=len(split.heldout),
        heldout_jobs=len(split.heldout_jobs),
        base_cer=base_cer,
        base_sha256=weights_digest(str(base)),
    ):
        return  # cancelled meanwhile
    if claim.checkpoint_key:
        # Resume: the checkpoint goes where the trainer looks for its last one.
        get_folder(
            ctx.storage, claim.checkpoint_key, work / "checkpoints" / f"checkpoint-{claim.step}"
        )
        log.info("model %s: resuming from step %d", claim.model_id, claim.step)
    recipe = Recipe(**{k: v for k, v in claim.recipe.items() if k in Recipe.__dataclass_fields__})  # type: ignore[arg-type]
    tuned = fine_tune(
        base=base,
        train=split.train,
        recipe=recipe,
        work=work,
        hooks=lease,
        checkpoint_every=s.train_checkpoint_every,
    )
    if tuned is None:
        log.info("model %s: stopped (cancelled, or its claim was taken over)", claim.model_id)
        return
    if lease.lost.is_set():
        return
    cer = decoding(tuned, split.heldout)
    key = put_folder(ctx.storage, tuned)
    lifecycle.finish(
        ctx.sessions,
        ctx.storage,
        claim,
        artifact_key=key,
        model_sha256=weights_digest(str(tuned)),
        cer=cer,
    )
    log.info("model %s ready: held-out CER %.4f (base %.4f)", claim.model_id, cer, base_cer)


def _base(claim: TrainingClaim, ctx: TrainerContext, work: Path) -> Path:
    """The base model's folder: the deployment's model, or a tenant model unpacked."""
    if claim.base == "builtin":
        return Path(resolve_model(ctx.settings.model))
    if not claim.base_artifact:
        raise BlobMissing(f"model {claim.base} has no stored weights")
    return get_folder(ctx.storage, claim.base_artifact, work / "base")


class ModelSweeper(threading.Thread):
    """Sends again the models whose trainer died or whose message was lost."""

    def __init__(self, ctx: TrainerContext, sender: CelerySender) -> None:
        super().__init__(name="htrq-model-sweeper", daemon=True)
        self.ctx, self.sender = ctx, sender
        self.stopping = threading.Event()

    def sweep(self) -> None:
        grace = self.ctx.settings.train_lease_seconds
        # A queued model waits behind the trainings before it while messages wait on the
        # queue; only an empty queue says its message was lost.
        empty = self.sender.queue_depth([TRAINER_QUEUE]) == 0
        for model_id in lifecycle.sweep(self.ctx.sessions, queued_grace=grace, queued=empty):
            log.warning("model %s: its training was lost; sending it again", model_id)
            self.sender.send_training(str(model_id))

    def run(self) -> None:
        while not self.stopping.wait(self.ctx.settings.sweep_interval):
            try:
                self.sweep()
            except Exception:
                log.exception("model sweeper: sweep failed")

    def stop(self) -> None:
        self.stopping.set()


def create_trainer_app(settings: Settings, ctx: TrainerContext) -> Celery:
    """A Celery app that takes one training at a time from the trainers' queue."""
    app = make_celery(settings, name="htrq-trainer")
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_send_task_events=False,
    )

    @app.task(name=TRAIN_MODEL, ignore_result=True)
    def train(model_id: str) -> None:
        train_model(model_id, ctx)

    sweeper = ModelSweeper(ctx, CelerySender(app))

    def start(**_: Any) -> None:
        sweeper.start()

    def stop(**_: Any) -> None:
        sweeper.stop()

    signals.worker_ready.connect(start, weak=False, dispatch_uid="htrq-model-sweeper")
    signals.worker_shutdown.connect(stop, weak=False, dispatch_uid="htrq-model-sweeper-stop")
    return app


def serve(settings: Settings, *, loglevel: str = "info", hostname: str | None = None) -> None:
    """Run the trainer (solo pool: one training in this process, which holds the torch
    threads ``HTRQ_TRAINER_THREADS`` allows)."""
    import torch

    assert settings.database_url
    torch.set_num_threads(settings.trainer_threads_for(len(os.sched_getaffinity(0))))
    ctx = TrainerContext(
        settings=settings,
        sessions=make_sessions(make_engine(settings.database_url)),
        storage=open_store(settings),
    )
    argv = ["worker", f"--loglevel={loglevel}", f"--queues={TRAINER_QUEUE}", "--pool=solo"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    create_trainer_app(settings, ctx).worker_main(argv)
