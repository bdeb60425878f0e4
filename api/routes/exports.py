"""``/v1/jobs/{id}/export`` and ``/v1/jobs/{id}/pages/{index}/export``: txt, json, ALTO, PAGE.

Rendering is :mod:`htrq.exports` (pure); this module only loads rows and picks the format.
A page export answers 409 until the page has succeeded. A job export is available at any
time: pages not (yet) succeeded are empty in txt and XML and carry their status in json.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from api.deps import SessionsDep
from api.schemas import ErrorBody
from htrq.exports import FORMATS, LineResult, PageResult, render_job_export, render_page_export
from htrq.jobs import NotFound
from htrq.models import Job, Line, Page

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
        result = page_result(page, page.lines)
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
        results = [page_result(p, p.lines if p.status == "succeeded" else []) for p in pages]
    body, media, ext = render_job_export(results, format)
    if format in ("alto", "page"):
        ext = f"{format}.zip"
    return _download(body, media, f"{jid}.{ext}")


def page_result(page: Page, lines: Sequence[Line]) -> PageResult:
    """ORM rows to the export's input.

    Page size and line outlines come from ``Page.width``/``height`` and ``Line.polygon``/
    ``baseline`` (JSON point lists) where the schema has them; without a stored size the
    page is taken to end at its lowest, rightmost line.
    """
    line_results = [
        LineResult(
            text=ln.text,
            confidence=ln.confidence,
            bbox=(ln.x0, ln.y0, ln.x1, ln.y1),
            polygon=_points(getattr(ln, "polygon", None)),
            baseline=_points(getattr(ln, "baseline", None)),
        )
        for ln in lines
    ]
    width = getattr(page, "width", None) or max((ln.x1 for ln in lines), default=1)
    height = getattr(page, "height", None) or max((ln.y1 for ln in lines), default=1)
    name = page.filename or f"page-{page.index + 1}"
    # Pages of one PDF or TIFF share a file name: name the frame as ImageMagick does.
    image_name = name if page.frame == 0 else f"{name}[{page.frame}]"
    return PageResult(
        index=page.index,
        width=int(width),
        height=int(height),
        image_name=image_name,
        lines=line_results,
        confidence=page.confidence,
        status=page.status,
        error={"code": page.error_code, "message": page.error_message or ""}
        if page.error_code
        else None,
    )


def _points(value: Any) -> list[tuple[int, int]] | None:
    """A stored point list (JSON text or a list of pairs) as tuples, or None."""
    if not value:
        return None
    pts = json.loads(value) if isinstance(value, str) else value
    return [(int(x), int(y)) for x, y in pts]


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
