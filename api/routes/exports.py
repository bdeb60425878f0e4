"""``/v1/jobs/{id}/export`` and ``/v1/jobs/{id}/pages/{index}/export``: txt, json, ALTO, PAGE.

Rendering is :mod:`htrq.exports` (pure); this module only loads rows and picks the format.
A page export answers 409 until the page has succeeded, a job export until every page has
finished. In a finished job, failed pages are empty in txt (the form feeds keep the page
positions), left out of the ALTO and PAGE zips, and carry their error in json.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from api.deps import SessionsDep, SettingsDep, StorageDep, TenantDep
from api.schemas import ErrorBody
from htrq.exports import FORMATS, from_rows, render_job_export, render_page_export
from htrq.jobs import NotFound, check_page_index, owned_job
from htrq.models import Page
from htrq.page_images import upright_page
from htrq.pdfexport import searchable_pdf
from htrq.settings import Settings
from htrq.storage import BlobStore

router = APIRouter(prefix="/v1/jobs", tags=["exports"])

Format = Literal["txt", "json", "alto", "page", "pdf"]
FormatQuery = Annotated[
    Format,
    Query(
        description="txt, json, alto (ALTO 4.4), page (PAGE XML 2019) or pdf (the page images "
        "with an invisible, searchable text layer)"
    ),
]
EXTENSIONS = {"txt": "txt", "json": "json", "alto": "alto.xml", "page": "page.xml", "pdf": "pdf"}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
    404: {"model": ErrorBody, "description": "unknown job or page"},
    409: {"model": ErrorBody, "description": "the page (or job) has not finished (yet)"},
    422: {"model": ErrorBody, "description": "invalid request (such as an unknown format)"},
    503: {
        "model": ErrorBody,
        "description": "pdf: no PDF renderer answered in time (`render_busy`, "
        "`render_too_slow`, `render_failed`); try again after `Retry-After` seconds",
    },
}


def _exported(*media_types: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer of an export: a file download in one of ``media_types``."""
    file = {"schema": {"type": "string", "format": "binary"}}
    # The json format is a JSON document (htrq's page result), not an opaque file.
    document = {"schema": {"type": "object"}}
    return {
        200: {
            "description": "the export, as a download",
            "content": {m: document if m == "application/json" else file for m in media_types},
            "headers": {
                "Content-Disposition": {
                    "description": "`attachment` with the file's name",
                    "schema": {"type": "string"},
                }
            },
        },
        **ERRORS,
    }


@router.get(
    "/{job_id}/pages/{index}/export",
    response_class=Response,
    responses=_exported(*sorted(set(FORMATS.values()))),
)
def export_page(
    job_id: str,
    index: int,
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: TenantDep,
    format: FormatQuery = "txt",
) -> Response:
    """One page's result as plain text, JSON, ALTO 4 or PAGE XML."""
    jid = _parse_id(job_id)
    check_page_index(job_id, index)
    with sessions() as s:
        owned_job(s, tenant, jid)
        page = s.scalars(
            select(Page)
            .where(Page.job_id == jid, Page.index == index)
            .options(selectinload(Page.lines))
        ).first()
        if page is None:
            raise NotFound(f"no page {index} in job {job_id}")
        if page.status != "succeeded":
            return _conflict(
                "page_not_succeeded", f"page {index} is {page.status}; export it once it succeeded"
            )
        result = from_rows(page, page.lines, settings.review_below)
        source = (page.blob_key, page.frame)
    if format == "pdf":
        body = searchable_pdf(
            [(result, page_image(storage, settings, *source))], title=f"{jid} page {index + 1}"
        )
    else:
        body = render_page_export(result, format)
    name = f"{jid}-page-{index + 1:04d}.{EXTENSIONS[format]}"
    return _download(body, FORMATS[format], name)


@router.get(
    "/{job_id}/export",
    response_class=Response,
    # Job-level ALTO and PAGE are a zip of one XML file per page.
    responses=_exported(*sorted({*FORMATS.values(), "application/zip"} - {"application/xml"})),
)
def export_job(
    job_id: str,
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: TenantDep,
    format: FormatQuery = "txt",
) -> Response:
    """The whole job, pages in order, once every page has finished: txt (form feed between
    pages), JSON, or a zip of one ALTO / PAGE XML file per succeeded page
    (``page-0001.xml`` ...)."""
    jid = _parse_id(job_id)
    with sessions() as s:
        owned_job(s, tenant, jid)
        pages = s.scalars(
            select(Page)
            .where(Page.job_id == jid)
            .order_by(Page.index)
            .options(selectinload(Page.lines))
        ).all()
        waiting = [p.index for p in pages if p.status not in ("succeeded", "failed")]
        if waiting:
            return _conflict(
                "job_not_finished",
                f"{len(waiting)} pages are still queued or running (the first is page "
                f"{waiting[0]}); export the job once it has finished",
            )
        results = [
            from_rows(p, p.lines if p.status == "succeeded" else [], settings.review_below)
            for p in pages
        ]
        sources = [(p.blob_key, p.frame) for p in pages]
    if format == "pdf":
        # The pages that succeeded, in order; a failed page has no text to search.
        readable = [
            (r, src) for r, src in zip(results, sources, strict=True) if r.status == "succeeded"
        ]
        body = searchable_pdf(
            ((r, page_image(storage, settings, *src)) for r, src in readable), title=str(jid)
        )
        return _download(body, "application/pdf", f"{jid}.pdf")
    body, media, ext = render_job_export(results, format)
    if format in ("alto", "page"):
        ext = f"{format}.zip"
    return _download(body, media, f"{jid}.{ext}")


def page_image(storage: BlobStore, settings: Settings, blob_key: str, frame: int) -> Image.Image:
    return upright_page(storage.get(blob_key), frame, settings)


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id}") from None


def _conflict(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=409)


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
