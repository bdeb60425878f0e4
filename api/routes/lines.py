"""``PATCH /v1/jobs/{id}/pages/{index}/lines/{line}``: a person corrects or confirms a line.

The review page calls it with a review link's token, a DMS with its API key; either way
another tenant's job answers 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ReviewerDep, SessionsDep, SettingsDep
from api.schemas import LIMITED, ErrorBody, LineCorrection, LineResource
from htrq.jobs.corrections import correct_line

router = APIRouter(prefix="/v1/jobs", tags=["review"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that is not valid JSON"},
    401: {"model": ErrorBody, "description": "no API key or review token, or a bad one"},
    404: {"model": ErrorBody, "description": "unknown job, page or line"},
    409: {"model": ErrorBody, "description": "the page has not succeeded: nothing to correct"},
    422: {"model": ErrorBody, "description": "not one line of text"},
    429: LIMITED,
}


@router.patch("/{job_id}/pages/{index}/lines/{line}", response_model=LineResource, responses=ERRORS)
def patch_line(
    job_id: str,
    index: int,
    line: int,
    body: LineCorrection,
    sessions: SessionsDep,
    settings: SettingsDep,
    tenant: ReviewerDep,
) -> LineResource:
    """Correct a line (``{"text": "..."}``) or confirm it as read (``{"reviewed": true}``).

    The model's reading is kept beside the correction (``model_text``); the page's text,
    ``lines_to_review`` and every export use the corrected text from now on. A corrected or
    reviewed line no longer ``needs_review``. ``{"reviewed": false}`` takes both back.
    """
    return correct_line(
        sessions=sessions,
        tenant_id=tenant,
        job_id=job_id,
        page_index=index,
        line_index=line,
        text=body.text,
        reviewed=body.reviewed,
        review_below=settings.review_below,
    )
