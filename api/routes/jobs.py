"""``/v1/jobs``: submit pages, list, read, retry and delete jobs.

Every route acts for the tenant of the request's API key (``TenantDep``): another tenant's
job answers 404, exactly as a job that does not exist.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import (
    HeavyDep,
    ReviewerDep,
    SenderDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    TenantDep,
)
from api.forms import read_form
from api.schemas import (
    LIMITED,
    NO_NUL,
    SUBMIT_BODY,
    ErrorBody,
    IsoDatetime,
    JobList,
    JobResource,
    PageResource,
    RetryBody,
    submit_fields,
)
from htrq import jobs
from htrq.jobs.deletion import delete_job
from htrq.jobs.listing import CURSOR_PATTERN, MAX_LIMIT, list_jobs
from htrq.resources import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "a body that is not valid multipart/form-data, or one cut off before "
        "its closing boundary",
    },
    401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
    404: {"model": ErrorBody, "description": "unknown job or page"},
    409: {"model": ErrorBody, "description": "idempotency key used for other content"},
    413: {"model": ErrorBody, "description": "file, request or job too large"},
    415: {"model": ErrorBody, "description": "not an accepted file format"},
    422: {"model": ErrorBody, "description": "invalid request, file or callback URL"},
    429: LIMITED,
}


@router.post(
    "",
    status_code=201,
    response_model=JobResource,
    responses={
        200: {"model": JobResource, "description": "repeat of a submitted job"},
        **ERRORS,
        503: {
            "model": ErrorBody,
            "description": "no PDF renderer was free to open a PDF (`render_busy`); nothing "
            "was stored: send it again after `Retry-After` seconds",
        },
    },
    openapi_extra={"requestBody": SUBMIT_BODY},
)
async def create_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    sender: SenderDep,
    tenant: TenantDep,
    _slot: HeavyDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobResource:
    """Upload pages; each file becomes one page or more (PDF, multi-page TIFF).

    A file that cannot be read (``invalid_pdf``, ``encrypted_pdf``, ``unsupported_format``,
    ``empty_file``, ``too_large`` in pixels, ...) becomes one page that is ``failed`` at once
    with that code, and the other files are read as usual. The request itself is refused
    (4xx, nothing stored) when it has no files, a file over the byte limit, more pages in all
    than the job limit, a refused callback URL, or no readable file at all.

    A repeat answers the first job with 200 instead of creating another: a request with an
    ``Idempotency-Key`` header repeats the tenant's job of that key, and one without it
    repeats the tenant's job of the same ``external_id``. Keys are each tenant's own.

    The key is checked, and the tenant's slot taken, before the body is read; a file over the
    byte limit stops the reading at once.
    """
    # The fields' own checks (FastAPI no longer reads the form: see api/forms.py).
    with tempfile.TemporaryDirectory(prefix="htrq-upload-") as tmp:
        form = await read_form(
            request.headers.get("content-type"),
            request.stream(),
            Path(tmp),
            file_field="files",
            max_file_bytes=settings.max_upload_bytes,
            max_files=settings.max_pages_per_job,
        )
        request.scope["htrq.body_read"] = True
        fields = submit_fields(form.fields)
        job, created = await anyio.to_thread.run_sync(
            functools.partial(
                jobs.submit,
                sessions=sessions,
                storage=storage,
                send=sender,
                settings=settings,
                tenant_id=tenant,
                uploads=form.uploads,
                idempotency_key=idempotency_key,
                external_id=fields.external_id,
                mode=fields.mode,
                callback_url=fields.callback_url,
                model=fields.model,
                language=fields.language,
                reuse=fields.reuse,
            )
        )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get(
    "",
    response_model=JobList,
    responses={401: ERRORS[401], 422: ERRORS[422], 429: LIMITED},
)
def read_jobs(
    sessions: SessionsDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    external_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    created_after: IsoDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="a `next_cursor` of an earlier answer"),
    ] = None,
) -> JobList:
    """The tenant's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    return list_jobs(
        sessions=sessions,
        tenant_id=tenant,
        status=status,
        external_id=external_id,
        created_after=created_after,
        limit=limit,
        cursor=cursor,
    )


@router.get("/{job_id}", response_model=JobResource, responses=ERRORS)
def read_job(job_id: str, sessions: SessionsDep, tenant: ReviewerDep) -> JobResource:
    """The job, its pages' states, the count of pages in each state, its webhook's state.
    A review link's token may read it too."""
    return jobs.get_job(sessions=sessions, tenant_id=tenant, job_id=job_id)


@router.delete("/{job_id}", status_code=204, responses=ERRORS)
def remove_job(
    job_id: str,
    sessions: SessionsDep,
    storage: StorageDep,
    sender: SenderDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> Response:
    """Delete the job, its pages, lines and webhook events, and its stored files (those no
    other page uses). A page being read meanwhile finishes into nothing. Pages of other jobs
    that took a reading from this job's keep it; those waiting for one of its pages being
    read are read themselves."""
    delete_job(
        sessions=sessions,
        storage=storage,
        tenant_id=tenant,
        job_id=job_id,
        send=sender,
        settings=settings,
    )
    return Response(status_code=204)


@router.get("/{job_id}/pages/{index}", response_model=PageResource, responses=ERRORS)
def read_page(
    job_id: str, index: int, sessions: SessionsDep, settings: SettingsDep, tenant: ReviewerDep
) -> PageResource:
    """One page's text, confidence, lines, error, attempts and provenance; each line's
    text is a person's correction where there is one (``model_text`` keeps the model's).
    A review link's token may read it too."""
    return jobs.get_page(
        sessions=sessions,
        tenant_id=tenant,
        job_id=job_id,
        index=index,
        review_below=settings.review_below,
    )


@router.post("/{job_id}/retry", response_model=RetryBody, responses=ERRORS)
def retry_job(
    job_id: str,
    sessions: SessionsDep,
    sender: SenderDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> RetryBody:
    """Put the job's failed pages back in the queue (not those that failed for their input:
    reading them again can only fail again); answers how many, and, when none, why."""
    done = jobs.retry_job(
        sessions=sessions, send=sender, settings=settings, tenant_id=tenant, job_id=job_id
    )
    return RetryBody(job_id=job_id, requeued=done.requeued, reason=done.reason)
