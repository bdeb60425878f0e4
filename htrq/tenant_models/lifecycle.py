"""A tenant model's training, as the trainer and its sweeper move it along.

``claim`` takes a model for one training attempt under a lease; ``attempts`` is the fencing
token, so a trainer that lost its claim (it stalled past the lease and another took over, or
the model was cancelled) has every later write refused and stops. The trainer beats
(``heartbeat``) every few steps, storing its step; it sends a checkpoint to the blob store
every ``HTRQ_TRAIN_CHECKPOINT_EVERY`` steps (``checkpoint``), from which a later claim goes
on. ``finish`` and ``fail`` end the training and write the ``model.ready`` /
``model.failed`` event to the webhook outbox in the same transaction. ``sweep`` finds the
trainings whose trainer died (lease run out) and the queued ones whose message was lost.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.models import Tenant, TenantModel, WebhookEvent, utcnow
from htrq.storage import BlobStore
from htrq.tenant_models import remove_blobs

READY_EVENT = "model.ready"
FAILED_EVENT = "model.failed"


@dataclass(frozen=True)
class TrainingClaim:
    """What one training attempt needs, and its fencing token."""

    model_id: uuid.UUID
    tenant: str  #: the tenant's name (``checked_lines`` selects by it)
    token: int
    name: str
    base: str  #: ``builtin`` or a model id
    base_artifact: str | None  #: the base model's blob, for a tenant model base
    steps: int
    recipe: dict[str, object]
    lines_since: datetime | None
    checkpoint_key: str | None  #: where a resumed training goes on from
    step: int


def claim(
    sessions: sessionmaker[Session], model_id: uuid.UUID | str, *, lease: float, max_attempts: int
) -> TrainingClaim | None:
    """Claim a model to train; None when there is nothing to do: it is gone, finished,
    cancelled, or another trainer's live lease holds it. A claim past ``max_attempts``
    fails the model (``training_failed``) instead."""
    mid = uuid.UUID(str(model_id))
    now = utcnow()
    with session_scope(sessions) as s:
        row = s.scalars(select(TenantModel).where(TenantModel.id == mid).with_for_update()).first()
        if row is None or row.status not in ("queued", "training"):
            return None
        if row.status == "training" and row.lease_until and row.lease_until > now:
            return None
        if row.attempts >= max_attempts:
            _end(
                s,
                row,
                "failed",
                code="training_failed",
                message=f"its training stopped {row.attempts} times without finishing (the "
                f"trainer died, lost its lease or failed; the last reached step {row.step}"
                + (f"; last error: {row.error_message}" if row.error_message else "")
                + "); create it again, with fewer steps, or ask the operator to look at the "
                "trainers",
            )
            return None
        row.attempts += 1
        row.status, row.lease_until = "training", now + timedelta(seconds=lease)
        row.started_at = row.started_at or now
        base_artifact = None
        if row.base != "builtin":
            base_artifact = s.scalar(
                select(TenantModel.artifact_key).where(TenantModel.id == uuid.UUID(row.base))
            )
        tenant = s.scalar(select(Tenant.name).where(Tenant.id == row.tenant_id))
        assert tenant is not None
        return TrainingClaim(
            model_id=row.id,
            tenant=tenant,
            token=row.attempts,
            name=row.name,
            base=row.base,
            base_artifact=base_artifact,
            steps=row.steps,
            recipe=json.loads(row.recipe),
            lines_since=row.lines_since,
            checkpoint_key=row.checkpoint_key,
            step=row.step,
        )


def _fenced(c: TrainingClaim):  # type: ignore[no-untyped-def]  # a SQLAlchemy Update
    return update(TenantModel).where(
        TenantModel.id == c.model_id,
        TenantModel.attempts == c.token,
        TenantModel.status == "training",
    )


def heartbeat(
    sessions: sessionmaker[Session], c: TrainingClaim, *, step: int, lease: float
) -> bool:
    """Store the step and push the lease on; False: the claim is lost (cancelled, or taken
    over) and the trainer must stop."""
    with session_scope(sessions) as s:
        done = s.execute(
            _fenced(c).values(step=step, lease_until=utcnow() + timedelta(seconds=lease))
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]  # a CursorResult


def give_up(sessions: sessionmaker[Session], c: TrainingClaim, *, error: str) -> bool:
    """This attempt failed with ``error`` (kept, to say why if the model fails for good): the
    lease ends now, so that the sweeper sends it again without waiting it out."""
    with session_scope(sessions) as s:
        done = s.execute(_fenced(c).values(lease_until=utcnow(), error_message=error))
        return bool(done.rowcount)  # type: ignore[attr-defined]  # a CursorResult


def record(sessions: sessionmaker[Session], c: TrainingClaim, **values: object) -> bool:
    """Store figures of the training (lines, held-out lines, base's CER and SHA)."""
    with session_scope(sessions) as s:
        return bool(s.execute(_fenced(c).values(**values)).rowcount)  # type: ignore[attr-defined]


def checkpoint(
    sessions: sessionmaker[Session], storage: BlobStore, c: TrainingClaim, *, key: str, step: int
) -> bool:
    """Make ``key`` (a stored checkpoint at ``step``) the one a resume starts from and
    remove the one before; a lost claim removes ``key`` instead."""
    with session_scope(sessions) as s:
        old = s.scalar(select(TenantModel.checkpoint_key).where(TenantModel.id == c.model_id))
        kept = bool(s.execute(_fenced(c).values(checkpoint_key=key, step=step)).rowcount)  # type: ignore[attr-defined]
    remove_blobs(storage, [old] if kept and old and old != key else [] if kept else [key])
    return kept


def finish(
    sessions: sessionmaker[Session],
    storage: BlobStore,
    c: TrainingClaim,
    *,
    artifact_key: str,
    model_sha256: str | None,
    cer: float,
) -> bool:
    """The model is ready: its artifact, digest and held-out CER stored, ``model.ready``
    written to the outbox, the checkpoint removed. A lost claim removes the artifact."""
    with session_scope(sessions) as s:
        row = s.scalars(
            select(TenantModel)
            .where(
                TenantModel.id == c.model_id,
                TenantModel.attempts == c.token,
                TenantModel.status == "training",
            )
            .with_for_update()
        ).first()
        if row is None:
            kept, old = False, None
        else:
            old = row.checkpoint_key
            row.artifact_key, row.model_sha256, row.cer = artifact_key, model_sha256, cer
            row.checkpoint_key, row.step = None, row.steps
            _end(s, row, "ready")
            kept = True
    remove_blobs(storage, [old] if old else [] if kept else [artifact_key])
    return kept


def fail(
    sessions: sessionmaker[Session],
    storage: BlobStore,
    c: TrainingClaim,
    *,
    code: str,
    message: str,
) -> bool:
    """The training cannot succeed (no data to cut, a base that will not load): failed with
    a reason, ``model.failed`` written, the checkpoint removed."""
    with session_scope(sessions) as s:
        row = s.scalars(
            select(TenantModel)
            .where(TenantModel.id == c.model_id, TenantModel.attempts == c.token)
            .where(TenantModel.status == "training")
            .with_for_update()
        ).first()
        if row is None:
            return False
        old = row.checkpoint_key
        row.checkpoint_key = None
        _end(s, row, "failed", code=code, message=message)
    remove_blobs(storage, [old] if old else [])
    return True


def _end(
    s: Session,
    row: TenantModel,
    status: str,
    *,
    code: str | None = None,
    message: str | None = None,
) -> None:
    now = utcnow()
    row.status, row.finished_at, row.lease_until = status, now, None
    row.error_code, row.error_message = code, message
    if not row.callback_url:
        return
    event_id = uuid.uuid4()
    payload = {
        "id": str(event_id),
        "type": READY_EVENT if status == "ready" else FAILED_EVENT,
        "model_id": str(row.id),
        "name": row.name,
        "status": status,
        "cer": row.cer,
        "base_cer": row.base_cer,
        "error": {"code": code, "message": message} if code else None,
        "finished_at": now.isoformat(),
    }
    s.add(
        WebhookEvent(
            id=event_id,
            model_id=row.id,
            seq=1,
            url=row.callback_url,
            payload=json.dumps(payload, separators=(",", ":")),
            status="pending",
            attempts=0,
            next_attempt_at=now,
        )
    )


def sweep(
    sessions: sessionmaker[Session], *, queued_grace: float, queued: bool = True
) -> list[uuid.UUID]:
    """Models to send to the trainers again: trainings whose lease ran out (their trainer
    died; the next claim resumes from the checkpoint, or fails the model past
    ``HTRQ_TRAIN_MAX_ATTEMPTS``) and models queued longer than ``queued_grace`` seconds
    (their message was lost; only with ``queued``: a caller that sees messages waiting on
    the trainers' queue leaves them to it). Their ``queued_at`` is stamped now."""
    now = utcnow()
    with session_scope(sessions) as s:
        ids = list(
            s.scalars(
                select(TenantModel.id)
                .where(
                    ((TenantModel.status == "queued") & queued)
                    | ((TenantModel.status == "training") & (TenantModel.lease_until < now)),
                    # Once per grace period: a model no trainer takes is not sent again
                    # at every sweep.
                    TenantModel.queued_at < now - timedelta(seconds=queued_grace),
                )
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            s.execute(update(TenantModel).where(TenantModel.id.in_(ids)).values(queued_at=now))
        return ids
