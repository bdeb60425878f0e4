"""``/v1/jobs/{id}/export`` and ``/v1/jobs/{id}/pages/{index}/export``: txt, json, ALTO, PAGE.

Loading is :mod:`htrq.exports.results`, rendering :mod:`htrq.exports.formats` (pure); this
module only picks the format and names the file. A page export answers 409 until the page
has succeeded, a job export until every page has finished. In a finished job, failed pages
are empty in txt (the form feeds keep the page positions), left out of the ALTO and PAGE
zips, and carry their error in json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from api.deps import HeavyDep, SessionsDep, SettingsDep, StorageDep, TenantDep
from api.schemas import LIMITED, ErrorBody
from htrq.exports.formats import FORMATS, render_job_export, render_page_export
from htrq.exports.results import job_to_export, page_to_export, pdf_of

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
    409: {
        "model": ErrorBody,
        "description": "the page (or job) has not finished yet (`job_not_finished`, "
        "`page_not_succeeded`), or, for pdf, alto and page, none of the job's pages succeeded "
        "(`no_page_succeeded`)",
    },
    422: {"model": ErrorBody, "description": "invalid request (such as an unknown format)"},
    429: LIMITED,
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
    _slot: HeavyDep,
    format: FormatQuery = "txt",
) -> Response:
    """One page's result as plain text, JSON, ALTO 4 or PAGE XML."""
    jid, page = page_to_export(
        sessions=sessions,
        tenant_id=tenant,
        job_id=job_id,
        index=index,
        review_below=settings.review_below,
    )
    if format == "pdf":
        body = pdf_of([page], storage=storage, settings=settings, title=f"{jid} page {index + 1}")
    else:
        body = render_page_export(page.result, format)
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
    _slot: HeavyDep,
    format: FormatQuery = "txt",
) -> Response:
    """The whole job, pages in order, once every page has finished: txt (form feed between
    pages), JSON, or a zip of one ALTO / PAGE XML file per succeeded page
    (``page-0001.xml`` ...). PDF, ALTO and PAGE hold succeeded pages only: a job whose pages
    all failed answers 409 ``no_page_succeeded`` for them."""
    jid, pages = job_to_export(
        sessions=sessions,
        tenant_id=tenant,
        job_id=job_id,
        review_below=settings.review_below,
        need_succeeded=format in ("pdf", "alto", "page"),
    )
    if format == "pdf":
        body = pdf_of(pages, storage=storage, settings=settings, title=str(jid))
        return _download(body, "application/pdf", f"{jid}.pdf")
    body, media, ext = render_job_export([p.result for p in pages], format)
    if format in ("alto", "page"):
        ext = f"{format}.zip"
    return _download(body, media, f"{jid}.{ext}")


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
