"""The review page (``/review/{job_id}``), the links that open it
(``POST /v1/jobs/{id}/review-link``) and their revocation.

The page is static HTML, script and CSS (``api/review/static``); it reads the job id from
its address and the token from its fragment (``#t=...``, which the browser never sends
here), and calls the API's own routes (page, image, ``PATCH`` line) with the token in the
``X-Review-Token`` header. So the server serves the page to anyone (it holds no data), and
every call it makes is checked.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request, Security
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles

from api.deps import SessionsDep, SettingsDep, TenantDep, bearer
from api.review import PAGE, STATIC_DIR
from api.schemas import LIMITED, ErrorBody, ReviewLink, ReviewLinkRequest, ReviewLinksRevoked
from htrq.tenants.review_links import TOKEN_FRAGMENT, make_token, revoke_links

router = APIRouter(tags=["review"])

#: The page loads only its own script, style, the API's JSON and the images it fetched
#: itself (``blob:``), sends no referrer, and posts no form anywhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def static_files() -> StaticFiles:
    """The page's script and style sheet, for ``app.mount("/review/static", ...)``."""
    return StaticFiles(directory=STATIC_DIR)


@router.post(
    "/v1/jobs/{job_id}/review-link",
    response_model=ReviewLink,
    responses={
        400: {"model": ErrorBody, "description": "a body that is not valid JSON"},
        401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
        404: {"model": ErrorBody, "description": "unknown job"},
        429: LIMITED,
    },
)
def create_review_link(
    job_id: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    tenant: TenantDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    body: ReviewLinkRequest | None = None,
) -> ReviewLink:
    """A link to the job's review page for a person without an API key: it lets a browser
    read the job's pages and images and correct their lines, for this job only, until
    ``expires_at``, until it is revoked (``DELETE /v1/jobs/{id}/review-links``,
    ``DELETE /v1/review-links``), or until the API key that asked for it is revoked. Made
    with an API key (a review link cannot make another). The token stands in the link's
    fragment (``#t=...``), which browsers never send to a server."""
    token, expires = make_token(
        sessions,
        settings,
        tenant_id=tenant,
        job_id=job_id,
        api_key=credentials.credentials if credentials is not None else None,
        seconds=body.expires_in if body else None,
    )
    base = settings.public_url or str(request.base_url).rstrip("/")
    return ReviewLink(
        url=f"{base}/review/{uuid.UUID(job_id)}#{TOKEN_FRAGMENT}={token}", expires_at=expires
    )


@router.delete(
    "/v1/jobs/{job_id}/review-links",
    response_model=ReviewLinksRevoked,
    responses={
        401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
        404: {"model": ErrorBody, "description": "unknown job"},
    },
)
def revoke_job_links(job_id: str, sessions: SessionsDep, tenant: TenantDep) -> ReviewLinksRevoked:
    """Revoke every review link of the job: they stop opening it at once."""
    return ReviewLinksRevoked(revoked=revoke_links(sessions, tenant_id=tenant, job_id=job_id))


@router.delete(
    "/v1/review-links",
    response_model=ReviewLinksRevoked,
    responses={
        401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"}
    },
)
def revoke_all_links(sessions: SessionsDep, tenant: TenantDep) -> ReviewLinksRevoked:
    """Revoke every review link of the tenant, of every job."""
    return ReviewLinksRevoked(revoked=revoke_links(sessions, tenant_id=tenant))


@router.get("/review/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def review_page(job_id: str) -> HTMLResponse:
    """The review page of a job. It holds no data: the token in its fragment (which the
    server never sees) is checked on each call the page makes, and the page tells the person
    when a link cannot be used."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers=PAGE_HEADERS)
