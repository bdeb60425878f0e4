"""``/v1/jobs/{id}/export`` and ``/v1/jobs/{id}/pages/{index}/export``: txt, json, ALTO, PAGE.

Rendering is :mod:`htrq.exports` (pure); this module only loads rows and picks the format.
A page export answers 409 until the page has succeeded. A job export is available at any
time: pages not (yet) succeeded are empty in txt and XML and carry their status in json.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from api.deps import SessionsDep
from api.schemas import ErrorBody
from htrq.exports import FORMATS, from_rows, render_job_export, render_page_export
from htrq.jobs import NotFound, check_page_index
from htrq.models import Job, Page

router = APIRouter(prefix="/v1/jobs", tags=["exports"])

Format = Literal["txt", "json", "alto", "page"]
FormatQuery = Annotated[
    Format, Query(description="txt, json, alto (ALTO 4.4) or page (PAGE XML 2019)")
]
EXTENSIONS = {"txt": "txt", "json": "json", "alto": "alto.xml", "page": "page.xml"}
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown job or page"},
    409: {"model": ErrorBody, "description": "the page has not succeeded (yet)"},
}


@router.get("/{job_id}/pages/{index}/export", responses=ERRORS)
def export_page(
    job_id: str, index: int, sessions: SessionsDep, format: FormatQuery = "txt"
) -> Response:
    """One page's result as plain text, JSON, ALTO 4 or PAGE XML."""
    jid = _parse_id(job_id)
    check_page_index(job_id, index)
    with sessions() as s:
        page = s.scalars(
            select(Page)
            .where(Page.job_id == jid, Page.index == index)
            .options(selectinload(Page.lines))
        ).first()
        if page is None:
            raise NotFound(f"no page {index} in job {job_id}")
        if page.status != "succeeded":
            return JSONResponse(
                {
                    "error": {
                        "code": "page_not_succeeded",
                        "message": f"page {index} is {page.status}; export it once it succeeded",
                    }
                },
                status_code=409,
            )
        result = from_rows(page, page.lines)
    body = render_page_export(result, format)
    name = f"{jid}-page-{index + 1:04d}.{EXTENSIONS[format]}"
    return _download(body, FORMATS[format], name)


@router.get("/{job_id}/export", responses={404: ERRORS[404]})
def export_job(job_id: str, sessions: SessionsDep, format: FormatQuery = "txt") -> Response:
    """The whole job, pages in order: txt (form feed between pages), JSON, or a zip of one
    ALTO / PAGE XML file per page (``page-0001.xml`` ...)."""
    jid = _parse_id(job_id)
    with sessions() as s:
        job = s.get(Job, jid)
        if job is None:
            raise NotFound(f"no job {job_id}")
        pages = s.scalars(
            select(Page)
            .where(Page.job_id == jid)
            .order_by(Page.index)
            .options(selectinload(Page.lines))
        ).all()
        results = [from_rows(p, p.lines if p.status == "succeeded" else []) for p in pages]
    body, media, ext = render_job_export(results, format)
    if format in ("alto", "page"):
        ext = f"{format}.zip"
    return _download(body, media, f"{jid}.{ext}")


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id}") from None


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
