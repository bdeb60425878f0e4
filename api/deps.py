"""Typed dependencies: what the routes take from the app's state."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Header, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from htrq.queue import CelerySender
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.tenants import default_tenant, tenant_for_key
from htrq.tenants.review_links import TOKEN_HEADER, TOKEN_QUERY, InvalidLink, check_token

#: The security scheme OpenAPI shows; errors are answered by :func:`get_tenant` itself.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An htrq API key: `Authorization: Bearer htrq_...` (`htrq keys create`)",
)


class Unauthorized(Exception):
    """A ``/v1`` request without a live key (answered 401 ``unauthorized``)."""


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings  # (Starlette's State holds Any)
    return settings


def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions  # (Starlette's State holds Any)
    return sessions


def get_storage(request: Request) -> BlobStore:
    storage: BlobStore = request.app.state.storage  # (Starlette's State holds Any)
    return storage


def get_sender(request: Request) -> CelerySender:
    sender: CelerySender = request.app.state.sender  # (Starlette's State holds Any)
    return sender


def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> uuid.UUID:
    """The tenant the request acts for: its key's, or ``default`` with ``HTRQ_AUTH=off``."""
    state = request.app.state
    if state.settings.auth == "off":
        if state.default_tenant is None:
            state.default_tenant = default_tenant(state.sessions)
        tenant_id: uuid.UUID = state.default_tenant
        return tenant_id
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send an API key: Authorization: Bearer <key>")
    tenant = tenant_for_key(state.sessions, credentials.credentials)
    if tenant is None:
        raise Unauthorized("the API key is unknown or revoked")
    return tenant


def get_reviewer(
    request: Request,
    job_id: str,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    t: Annotated[
        str | None,
        Query(
            alias=TOKEN_QUERY,
            max_length=100,
            description="a review link's token, in place of an API key (this job only)",
        ),
    ] = None,
    x_review_token: Annotated[
        str | None,
        Header(
            alias=TOKEN_HEADER,
            max_length=100,
            description="a review link's token, in place of an API key (this job only)",
        ),
    ] = None,
) -> uuid.UUID:
    """The tenant of a route the review page calls: the API key's, or, without a key, that
    of a review link's token for the job in the path (401 when it is altered, expired or
    for another job)."""
    token = x_review_token or t
    if credentials is None and token is not None:
        state = request.app.state
        try:
            return check_token(state.sessions, state.settings, job_id=job_id, token=token)
        except InvalidLink as exc:
            raise Unauthorized(str(exc)) from None
    return get_tenant(request, credentials)


SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]
#: The tenant by API key or, for the job in the path only, by a review link's token.
ReviewerDep = Annotated[uuid.UUID, Depends(get_reviewer)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
StorageDep = Annotated[BlobStore, Depends(get_storage)]
SenderDep = Annotated[CelerySender, Depends(get_sender)]
