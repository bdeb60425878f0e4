"""A tenant's pages loaded for an export: their results, and the searchable PDF of them.

A page export waits until the page has succeeded (:class:`PageNotSucceeded`), a job export
until every page has finished (:class:`JobNotFinished`). In a finished job, failed pages come
as results without lines (txt keeps their place, json carries their error).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from htrq.exports.formats import PageResult, from_rows
from htrq.exports.page_images import upright_page
from htrq.exports.pdf import searchable_pdf
from htrq.jobs import (
    JobNotFinished,
    NoPageSucceeded,
    NotFound,
    PageNotSucceeded,
    check_page_index,
    owned_job,
    parse_job_id,
)
from htrq.models import Page
from htrq.settings import Settings
from htrq.storage import BlobStore


@dataclass(frozen=True)
class ExportedPage:
    """A page's result, and where its image is stored (for the PDF)."""

    result: PageResult
    blob_key: str
    frame: int


def page_to_export(
    *,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    index: int,
    review_below: float,
) -> tuple[uuid.UUID, ExportedPage]:
    """The job's id and its page ``index``, which has succeeded.

    Raises :class:`NotFound` (another tenant's job too) and :class:`PageNotSucceeded`.
    """
    jid = parse_job_id(job_id)
    check_page_index(job_id, index)
    with sessions() as s:
        owned_job(s, tenant_id, jid)
        page = s.scalars(
            select(Page)
            .where(Page.job_id == jid, Page.index == index)
            .options(selectinload(Page.lines))
        ).first()
        if page is None:
            raise NotFound(f"no page {index} in job {job_id}")
        if page.status != "succeeded":
            raise PageNotSucceeded(f"page {index} is {page.status}; export it once it succeeded")
        return jid, _exported(page, review_below)


def job_to_export(
    *,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    review_below: float,
    need_succeeded: bool = False,
) -> tuple[uuid.UUID, list[ExportedPage]]:
    """The job's id and its pages in order, once every page has finished.

    Raises :class:`NotFound` (another tenant's job too), :class:`JobNotFinished`, and, with
    ``need_succeeded`` (a format of succeeded pages only), :class:`NoPageSucceeded` when every
    page failed.
    """
    jid = parse_job_id(job_id)
    with sessions() as s:
        owned_job(s, tenant_id, jid)
        pages = s.scalars(
            select(Page)
            .where(Page.job_id == jid)
            .order_by(Page.index)
            .options(selectinload(Page.lines))
        ).all()
        waiting = [p.index for p in pages if p.status not in ("succeeded", "failed")]
        if waiting:
            raise JobNotFinished(
                f"{len(waiting)} pages are still queued or running (the first is page "
                f"{waiting[0]}); export the job once it has finished"
            )
        if need_succeeded and not any(p.status == "succeeded" for p in pages):
            raise NoPageSucceeded(
                f"all {len(pages)} pages of job {jid} failed: there is no text to export in "
                "this format (the json export carries each page's error)"
            )
        return jid, [_exported(p, review_below) for p in pages]


def pdf_of(
    pages: Sequence[ExportedPage], *, storage: BlobStore, settings: Settings, title: str
) -> bytes:
    """The searchable PDF of the succeeded ones of ``pages``, in order (a failed page has no
    text to search); each image is read from storage as its page is written."""
    images: Iterator[tuple[PageResult, Image.Image]] = (
        (p.result, upright_page(storage.get(p.blob_key), p.frame, settings))
        for p in pages
        if p.result.status == "succeeded"
    )
    return searchable_pdf(images, title=title)


def _exported(page: Page, review_below: float) -> ExportedPage:
    lines = page.lines if page.status == "succeeded" else []
    return ExportedPage(from_rows(page, lines, review_below), page.blob_key, page.frame)
