"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import SenderDep, SessionsDep
from api.schemas import ReadyBody
from htrq.db import check_database

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyBody, responses={503: {"model": ReadyBody}})
def readyz(sessions: SessionsDep, sender: SenderDep) -> JSONResponse:
    """The database and the broker can be reached: 200, else 503 naming which is down."""
    body = ReadyBody(database=False, broker=False)
    try:
        check_database(sessions)
        body.database = True
    except Exception:
        pass
    try:
        sender.ping()
        body.broker = True
    except Exception:
        pass
    ok = body.database and body.broker
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
