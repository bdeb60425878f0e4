"""``GET /v1/jobs/{id}/pages/{index}/image``: the page as people see it, in the frame of its
line coordinates (what the review page draws the outlines on)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import HeavyReviewDep, ReviewerDep, SessionsDep, SettingsDep, StorageDep
from api.schemas import LIMITED, ErrorBody
from htrq.exports.page_images import stored_page_image
from htrq.storage import BlobMissing

router = APIRouter(prefix="/v1/jobs", tags=["review"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no API key or review token, or a bad one"},
    404: {"model": ErrorBody, "description": "unknown job or page, or its file is gone"},
    409: {"model": ErrorBody, "description": "the page has not succeeded"},
    429: LIMITED,
    503: {
        "model": ErrorBody,
        "description": "no PDF renderer answered in time (`render_busy`, `render_too_slow`, "
        "`render_failed`); try again after `Retry-After` seconds",
    },
}


@router.get(
    "/{job_id}/pages/{index}/image",
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the page"},
        **ERRORS,
    },
    response_class=Response,
)
def read_page_image(
    job_id: str,
    index: int,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: ReviewerDep,
    _slot: HeavyReviewDep,
) -> Response:
    """The succeeded page's image at its stored size (PNG, or JPEG for large pages): PDF
    pages rendered at ``HTRQ_PDF_DPI``, TIFF frames extracted, turned upright as read."""
    try:
        body, media = stored_page_image(
            sessions=sessions,
            storage=storage,
            settings=settings,
            tenant_id=tenant,
            job_id=job_id,
            index=index,
        )
    except BlobMissing:
        return _error(404, "blob_missing", f"the file of page {index} is no longer stored")
    # A page's file never changes (stored under its digest), so a client with a key may keep
    # it. One fetched with a review link's token is not kept: the link may be revoked, and
    # the browser may be shared.
    by_link = getattr(request.state, "review_token", False)
    cache = "no-store" if by_link else "private, max-age=86400"
    return Response(body, media_type=media, headers={"Cache-Control": cache})


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
