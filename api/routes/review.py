"""The review page (``/review/{job_id}``) and the signed links that open it
(``POST /v1/jobs/{id}/review-link``).

The page is static HTML, script and CSS (``api/review/static``); it reads the job id from
its address and the token from its ``t`` parameter, and calls the API's own routes (page,
image, ``PATCH`` line) with that token.
"""

from __future__ import annotations

import html
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles

from api.deps import SessionsDep, SettingsDep, TenantDep, Unauthorized, bearer, get_reviewer
from api.review import PAGE, STATIC_DIR
from api.schemas import LIMITED, ErrorBody, ReviewLink, ReviewLinkRequest
from htrq.jobs import NotFound, check_job
from htrq.tenants.review_links import TOKEN_QUERY, make_token

router = APIRouter(tags=["review"])

#: The page loads only its own script, style and the API's images and JSON, sends no
#: referrer (its address holds the token), and posts no form anywhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'",
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
    body: ReviewLinkRequest | None = None,
) -> ReviewLink:
    """A link to the job's review page for a person without an API key: it lets a browser
    read the job's pages and images and correct their lines, for this job only, until
    ``expires_at``. Made with an API key (a review link cannot make another)."""
    token, expires = make_token(
        sessions,
        settings,
        tenant_id=tenant,
        job_id=job_id,
        seconds=body.expires_in if body else None,
    )
    base = settings.public_url or str(request.base_url).rstrip("/")
    return ReviewLink(
        url=f"{base}/review/{uuid.UUID(job_id)}?{TOKEN_QUERY}={token}", expires_at=expires
    )


@router.get("/review/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def review_page(
    job_id: str,
    request: Request,
    sessions: SessionsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    t: Annotated[str | None, Query(alias=TOKEN_QUERY, max_length=100)] = None,
) -> HTMLResponse:
    """The review page of a job: with a review link's token, or without one while
    ``HTRQ_AUTH=off``. Refusals are a short page for the person, not JSON."""
    try:
        tenant = get_reviewer(request, job_id, credentials, t=t)
        check_job(sessions=sessions, tenant_id=tenant, job_id=job_id)
    except Unauthorized as exc:
        if t is None:
            return _refusal(
                401,
                "Open this page from a review link",
                "The review page opens from the link your document system makes for you "
                "(POST /v1/jobs/{id}/review-link with its API key); this address has none.",
            )
        return _refusal(401, "This review link cannot be used", str(exc))
    except NotFound:
        return _refusal(404, "No such job", "There is no job at this address (any more).")
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers=PAGE_HEADERS)


def _refusal(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} - htrq</title></head>"
        f"<body><main><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></main></body>"
        "</html>"
    )
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
