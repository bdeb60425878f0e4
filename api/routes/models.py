"""``/v1/models``: a tenant's own models, trained on its corrections, then named by its jobs.

Every route acts for the tenant of the request's API key: another tenant's model answers 404,
exactly as a model that does not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from api.deps import SenderDep, SessionsDep, SettingsDep, StorageDep, TenantDep
from api.schemas import LIMITED, ErrorBody, ModelRequest
from htrq import tenant_models
from htrq.resources import ModelList, ModelResource

router = APIRouter(prefix="/v1/models", tags=["models"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that is not valid JSON"},
    401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
    404: {"model": ErrorBody, "description": "unknown model"},
    429: LIMITED,
}


@router.post(
    "",
    status_code=202,
    response_model=ModelResource,
    responses={
        **ERRORS,
        409: {"model": ErrorBody, "description": "a model of that name exists (`model_exists`)"},
        422: {
            "model": ErrorBody,
            "description": "too few corrected lines (`too_few_lines`), a bad name "
            "(`invalid_model_name`), base (`unknown_base`), step count (`too_many_steps`) or "
            "callback URL",
        },
    },
)
def create_model(
    body: ModelRequest,
    sessions: SessionsDep,
    sender: SenderDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> ModelResource:
    """Train a model on your corrected and confirmed lines (all of them, or those checked
    since ``lines_since``), starting from ``base``: ``builtin`` or one of your ready models.
    Whole jobs are held out to measure it against its base. Answers at once, ``queued``;
    follow ``progress`` with ``GET /v1/models/{id}``, or give ``callback_url`` for the signed
    ``model.ready`` / ``model.failed`` events. Once ``ready``, a job reads with it by naming
    it: ``model=<name>``."""
    return tenant_models.create_model(
        sessions=sessions,
        send=sender.send_training,
        settings=settings,
        tenant_id=tenant,
        name=body.name,
        base=body.base,
        steps=body.steps,
        lines_since=body.lines_since,
        callback_url=body.callback_url,
    )


@router.get("", response_model=ModelList, responses=ERRORS)
def list_models(sessions: SessionsDep, tenant: TenantDep) -> ModelList:
    """Your models, newest first."""
    return ModelList(models=tenant_models.list_models(sessions=sessions, tenant_id=tenant))


@router.get("/{model_id}", response_model=ModelResource, responses=ERRORS)
def read_model(model_id: str, sessions: SessionsDep, tenant: TenantDep) -> ModelResource:
    """A model: its status, progress, held-out CER against its base, recipe and digests."""
    return tenant_models.get_model(sessions=sessions, tenant_id=tenant, model_id=model_id)


@router.delete(
    "/{model_id}",
    status_code=204,
    responses={**ERRORS, 202: {"model": ModelResource, "description": "a training cancelled"}},
)
def delete_model(
    model_id: str, sessions: SessionsDep, storage: StorageDep, tenant: TenantDep
) -> Response:
    """Delete a model (204), or cancel its training (202 with the model, now `cancelled`;
    delete it again to remove it). Its stored weights and checkpoints are removed; jobs that
    name it from now on answer `unknown_model`."""
    cancelled = tenant_models.delete_model(
        sessions=sessions, storage=storage, tenant_id=tenant, model_id=model_id
    )
    if cancelled is None:
        return Response(status_code=204)
    return JSONResponse(cancelled.model_dump(mode="json"), status_code=202)
