"""Tenant models as a resource: create (queue a training), list, read, delete or cancel.

A tenant's model is trained on that tenant's corrected and confirmed lines only
(``htrq.jobs.corrections.checked_lines``), by ``htrq trainer`` (``worker/training/tenant``);
its lifecycle past ``queued`` lives in :mod:`htrq.tenant_models.lifecycle`. Every function
takes the tenant, so that no query can forget it: another tenant's model is ``NotFound``,
exactly like a model that does not exist.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.delivery.addresses import CallbackPolicy, check_callback_url
from htrq.errors import PageError
from htrq.jobs import NotFound
from htrq.jobs.corrections import checked_lines
from htrq.models import MODEL_FINISHED, Tenant, TenantModel, utcnow
from htrq.resources import ErrorInfo, ModelProgress, ModelRecipe, ModelResource
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.text import MODEL_NAME

log = logging.getLogger(__name__)

#: What ``base`` names for the deployment's own model.
BUILTIN = "builtin"
NAME = re.compile(MODEL_NAME)
#: What ``base`` may name: ``builtin``, a model's name or its id.
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Share of the lines held out of training, in whole jobs, to measure the model.
HELDOUT_SHARE = 0.1

#: ``send(model_id)``: puts a model's training message on the trainers' queue.
SendTraining = Callable[[str], None]


class ModelExists(Exception):
    """The tenant already has a model of that name."""


def default_steps(settings: Settings, lines: int) -> int:
    """Steps for ``lines`` lines: ``HTRQ_TRAIN_EPOCHS`` passes over them, within the limit."""
    passes = settings.train_epochs * lines / settings.train_batch_size
    return max(1, min(settings.train_max_steps, math.ceil(passes)))


def create_model(
    *,
    sessions: sessionmaker[Session],
    send: SendTraining,
    settings: Settings,
    tenant_id: uuid.UUID,
    name: str,
    base: str = BUILTIN,
    steps: int | None = None,
    lines_since: datetime | None = None,
    callback_url: str | None = None,
) -> ModelResource:
    """Queue the training of a model on the tenant's checked lines; raise :class:`PageError`
    (``invalid_model_name``, ``unknown_base``, ``too_many_steps``, ``too_few_lines``) for a
    request that cannot train, :class:`ModelExists` for a name taken."""
    _check_name(settings, name)
    if steps is not None and steps > settings.train_max_steps:
        raise PageError(
            "too_many_steps", f"at most {settings.train_max_steps} steps (HTRQ_TRAIN_MAX_STEPS)"
        )
    if callback_url is not None:
        check_callback_url(callback_url, CallbackPolicy.from_settings(settings))
    with sessions() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None  # the request's own tenant
        tenant_name = tenant.name
        base_id = _base(s, tenant_id, base)
    lines, jobs = count_lines(sessions, tenant=tenant_name, since=lines_since)
    if lines < settings.train_min_lines or jobs < 2:
        raise PageError(
            "too_few_lines",
            f"{lines} corrected or confirmed lines in {jobs} jobs"
            + (f" since {lines_since.isoformat()}" if lines_since else "")
            + f"; a training takes at least {settings.train_min_lines} lines "
            "(HTRQ_TRAIN_MIN_LINES) in at least 2 jobs (whole jobs are held out to measure "
            "it): correct or confirm more lines (PATCH .../lines/{line})",
        )
    steps = steps or settings.train_steps or default_steps(settings, lines)
    recipe = ModelRecipe(
        steps=steps,
        batch_size=settings.train_batch_size,
        lr=settings.train_lr,
        warmup=min(50, steps // 10),
        augment=1.0,
        seed=0,
    )
    row = TenantModel(
        tenant_id=tenant_id,
        name=name,
        base=base_id,
        status="queued",
        steps=steps,
        step=0,
        lines_since=lines_since,
        recipe=recipe.model_dump_json(),
        callback_url=callback_url,
        attempts=0,
        queued_at=utcnow(),
    )
    try:
        with session_scope(sessions) as s:
            s.add(row)
            s.flush()
            model_id = row.id
    except IntegrityError:
        raise ModelExists(
            f"a model named {name!r} exists; delete it first or choose another name"
        ) from None
    # After the commit: a trainer must never receive an id whose row it cannot see. A send
    # that fails leaves the model `queued`, which the trainers' sweeper sends again.
    try:
        send(str(model_id))
    except Exception:
        log.warning("could not send model %s to the trainers; the sweeper will", model_id)
    return get_model(sessions=sessions, tenant_id=tenant_id, model_id=model_id)


def count_lines(
    sessions: sessionmaker[Session], *, tenant: str, since: datetime | None
) -> tuple[int, int]:
    """The tenant's lines a training would take (non-empty texts) and the jobs they are in."""
    rows = checked_lines(sessions=sessions, tenant=tenant, since=since)
    texts = [(r.job_id, r.correction if r.correction is not None else r.text) for r in rows]
    kept = [job for job, text in texts if text.strip()]
    return len(kept), len(set(kept))


def _check_name(settings: Settings, name: str) -> None:
    if not NAME.fullmatch(name):
        raise PageError(
            "invalid_model_name",
            "a model's name is 1 to 48 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit",
        )
    if name in settings.allowed_models or name == BUILTIN:
        raise PageError(
            "invalid_model_name", f"{name!r} is a model of the service; choose another name"
        )


def _base(s: Session, tenant_id: uuid.UUID, base: str) -> str:
    """``builtin``, or the id of the tenant's ready model named (by name or id) ``base``."""
    if base == BUILTIN:
        return BUILTIN
    row = _find(s, tenant_id, base) if _REF.fullmatch(base) else None
    if row is None or row.status != "ready":
        raise PageError(
            "unknown_base",
            f"base {base!r} is neither `builtin` nor a ready model of yours (GET /v1/models)",
        )
    return str(row.id)


def _find(s: Session, tenant_id: uuid.UUID, ref: str) -> TenantModel | None:
    """The tenant's model with this id or name."""
    q = select(TenantModel).where(TenantModel.tenant_id == tenant_id)
    try:
        return s.scalars(q.where(TenantModel.id == uuid.UUID(ref))).first()
    except ValueError:
        return s.scalars(q.where(TenantModel.name == ref)).first()


def ready_model(s: Session, tenant_id: uuid.UUID, name: str) -> TenantModel | None:
    """The tenant's ready model of that name (what a job's ``model`` may name), if any."""
    return s.scalars(
        select(TenantModel).where(
            TenantModel.tenant_id == tenant_id,
            TenantModel.name == name,
            TenantModel.status == "ready",
        )
    ).first()


def list_models(*, sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> list[ModelResource]:
    with sessions() as s:
        rows = s.scalars(
            select(TenantModel)
            .where(TenantModel.tenant_id == tenant_id)
            .order_by(TenantModel.created_at.desc(), TenantModel.id)
        ).all()
        return [model_resource(r) for r in rows]


def get_model(
    *, sessions: sessionmaker[Session], tenant_id: uuid.UUID, model_id: uuid.UUID | str
) -> ModelResource:
    with sessions() as s:
        return model_resource(_owned(s, tenant_id, model_id))


def delete_model(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    tenant_id: uuid.UUID,
    model_id: uuid.UUID | str,
) -> ModelResource | None:
    """Cancel a training (the model stays, ``cancelled``, and is returned) or delete a model
    whose training ended (None); either way its stored bytes are removed. A trainer at work
    on it notices at its next heartbeat and stops; what it stores later it removes again."""
    with session_scope(sessions) as s:
        row = _owned(s, tenant_id, model_id, lock=True)
        keys = [k for k in (row.checkpoint_key, row.artifact_key) if k]
        row.checkpoint_key = row.artifact_key = None
        if row.status in MODEL_FINISHED:
            s.delete(row)
            kept = None
        else:
            row.status, row.finished_at, row.lease_until = "cancelled", utcnow(), None
            s.flush()
            kept = model_resource(row)
    remove_blobs(storage, keys)
    return kept


def remove_blobs(storage: BlobStore, keys: list[str]) -> None:
    """Delete a model's blobs (its own: a tar nobody else stores); a failure leaves disk only."""
    for key in keys:
        try:
            storage.delete(key)
        except Exception:
            log.warning("could not remove model blob %s", key, exc_info=True)


def _owned(
    s: Session, tenant_id: uuid.UUID, model_id: uuid.UUID | str, *, lock: bool = False
) -> TenantModel:
    try:
        mid = model_id if isinstance(model_id, uuid.UUID) else uuid.UUID(str(model_id))
    except ValueError:
        raise NotFound(f"no model {model_id}") from None
    q = select(TenantModel).where(TenantModel.id == mid, TenantModel.tenant_id == tenant_id)
    row = s.scalars(q.with_for_update() if lock else q).first()
    if row is None:
        raise NotFound(f"no model {model_id}")
    return row


def model_resource(row: TenantModel) -> ModelResource:
    better = None
    if row.cer is not None and row.base_cer is not None:
        better = row.cer < row.base_cer
    return ModelResource(
        id=row.id,
        name=row.name,
        base=row.base,
        base_sha256=row.base_sha256,
        status=row.status,  # type: ignore[arg-type]  # CHECK holds it to ModelStatus
        progress=ModelProgress(step=row.step, steps=row.steps),
        train_lines=row.train_lines,
        heldout_lines=row.heldout_lines,
        heldout_jobs=row.heldout_jobs,
        base_cer=row.base_cer,
        cer=row.cer,
        better_than_base=better,
        recipe=ModelRecipe(**json.loads(row.recipe)),
        lines_since=row.lines_since,
        callback_url=row.callback_url,
        model_sha256=row.model_sha256,
        error=ErrorInfo(code=row.error_code, message=row.error_message or "")
        if row.error_code
        else None,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
