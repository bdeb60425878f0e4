"""Typed dependencies: what the routes take from the app's state."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from htrq.queue import CelerySender
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.tenants import default_tenant, tenant_for_key
from htrq.tenants.limits import TenantLimiter
from htrq.tenants.review_links import TOKEN_HEADER, InvalidLink, check_token
from htrq.tenants.secretbox import SecretBox

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


def get_limiter(request: Request) -> TenantLimiter:
    return request.app.state.limiter  # type: ignore[no-any-return]


def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> uuid.UUID:
    """The tenant the request acts for: its key's, or ``default`` with ``HTRQ_AUTH=off``;
    the request counts against the tenant's rate (429 ``rate_limited`` past it)."""
    tenant = _key_tenant(request, credentials)
    get_limiter(request).check_rate(tenant)
    return tenant


def _key_tenant(request: Request, credentials: HTTPAuthorizationCredentials | None) -> uuid.UUID:
    state = request.app.state
    if state.settings.auth == "off":
        if state.default_tenant is None:
            box = SecretBox.of(state.settings.secret_key)
            state.default_tenant = default_tenant(state.sessions, box=box)
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
    of a review link's token for the job in the path (401 when it is unknown, revoked,
    expired or for another job). A token travels only in a header, never in the address,
    which access logs keep; ``request.state.review_token`` says a token was used, so that
    what it fetched is not cached."""
    if credentials is None and x_review_token is not None:
        state = request.app.state
        try:
            tenant = check_token(
                state.sessions, state.settings, job_id=job_id, token=x_review_token
            )
        except InvalidLink as exc:
            raise Unauthorized(str(exc)) from None
        request.state.review_token = True
        get_limiter(request).check_rate(tenant)
        return tenant
    return get_tenant(request, credentials)


def heavy_slot(
    request: Request, tenant: Annotated[uuid.UUID, Depends(get_tenant)]
) -> Iterator[None]:
    """One of the tenant's slots for heavy requests (submit, export), held until the route
    returns; 429 ``too_many_concurrent`` when all are taken."""
    with get_limiter(request).heavy_slot(tenant):
        yield


def heavy_review_slot(
    request: Request, tenant: Annotated[uuid.UUID, Depends(get_reviewer)]
) -> Iterator[None]:
    """:func:`heavy_slot` for a route a review link's token may call (the page image)."""
    with get_limiter(request).heavy_slot(tenant):
        yield


SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]
#: The tenant by API key or, for the job in the path only, by a review link's token.
ReviewerDep = Annotated[uuid.UUID, Depends(get_reviewer)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
#: A slot for a heavy request of the key's tenant, held while the route runs.
HeavyDep = Annotated[None, Depends(heavy_slot)]
#: The same for a route a review link's token may call.
HeavyReviewDep = Annotated[None, Depends(heavy_review_slot)]
StorageDep = Annotated[BlobStore, Depends(get_storage)]
SenderDep = Annotated[CelerySender, Depends(get_sender)]
