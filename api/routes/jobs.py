"""``/v1/jobs``: submit pages, list, read, retry and delete jobs.

Every route acts for the tenant of the request's API key (``TenantDep``): another tenant's
job answers 404, exactly as a job that does not exist.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile

from api.deps import ReviewerDep, SenderDep, SessionsDep, SettingsDep, StorageDep, TenantDep
from api.schemas import ErrorBody, JobList, JobResource, PageResource, RetryBody
from htrq import jobs
from htrq.errors import PageError
from htrq.jobs.deletion import delete_job
from htrq.jobs.listing import MAX_LIMIT, list_jobs
from htrq.jobs.uploads import Upload
from htrq.resources import JobStatus
from htrq.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that is not valid multipart/form-data"},
    401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
    404: {"model": ErrorBody, "description": "unknown job or page"},
    409: {"model": ErrorBody, "description": "idempotency key used for other content"},
    413: {"model": ErrorBody, "description": "file, request or job too large"},
    415: {"model": ErrorBody, "description": "not an accepted file format"},
    422: {"model": ErrorBody, "description": "invalid request, file or callback URL"},
}

_CHUNK = 1024 * 1024
#: Text that PostgreSQL stores: anything but NUL, which a text column refuses (a 500 if it
#: reached the database; a 422 here).
NO_NUL = r"^[^\x00]*$"


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
)
def create_job(
    response: Response,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    sender: SenderDep,
    tenant: TenantDep,
    # Optional here so that a request without it (or with another field name) gets the
    # documented 422 no_files rather than a generic validation error.
    files: Annotated[
        list[UploadFile] | None,
        File(description="one or more page images, PDFs or TIFFs"),
    ] = None,
    external_id: Annotated[str | None, Form(max_length=255, pattern=NO_NUL)] = None,
    mode: Annotated[Literal["page", "line"], Form()] = "page",
    callback_url: Annotated[
        str | None,
        Form(
            max_length=2000,
            pattern=NO_NUL,
            description="where to POST a signed event when the job finishes (and again "
            "each time a retry finishes it)",
        ),
    ] = None,
    model: Annotated[
        str | None,
        Form(
            max_length=255,
            description="the model to read the pages with, one of the server's HTRQ_MODELS "
            "(422 unknown_model otherwise); default: the server's default model",
        ),
    ] = None,
    language: Annotated[
        str | None,
        Form(
            max_length=16,
            description="the language of the pages (`en`, `fr`, … one of the server's "
            "HTRQ_LANGUAGES, 422 unknown_language otherwise): its lexicon steers the reading "
            "towards its words, leaving names, numbers and old spellings as read; `none` reads "
            "by the glyphs alone; default: the server's HTRQ_LANGUAGE",
        ),
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobResource:
    """Upload pages; each file becomes one page or more (PDF, multi-page TIFF).

    A file that cannot be read (``invalid_pdf``, ``encrypted_pdf``, ``unsupported_format``,
    ``empty_file``, ``too_large`` in pixels, ...) becomes one page that is ``failed`` at once
    with that code, and the other files are read as usual. The request itself is refused
    (4xx, nothing stored) when it has no files, a file over the byte limit, more pages in all
    than the job limit, a refused callback URL, or no readable file at all.

    A repeat under the same ``Idempotency-Key`` header (or ``external_id``) answers the first
    job with 200 instead of creating another; keys are each tenant's own.
    """
    with tempfile.TemporaryDirectory(prefix="htrq-upload-") as tmp:
        uploads = [_spool(f, Path(tmp) / str(i), settings) for i, f in enumerate(files or [])]
        job, created = jobs.submit(
            sessions=sessions,
            storage=storage,
            send=sender,
            settings=settings,
            tenant_id=tenant,
            uploads=uploads,
            idempotency_key=idempotency_key,
            external_id=external_id,
            mode=mode,
            callback_url=callback_url,
            model=model,
            language=language,
        )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


def _spool(f: UploadFile, path: Path, settings: Settings) -> Upload:
    """Copy one uploaded file to ``path`` in chunks, hashing it and holding it to the byte
    limit: its bytes are never all in memory."""
    h, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        while chunk := f.file.read(_CHUNK):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise PageError(
                    "too_large",
                    f"{f.filename}: over the limit of {settings.max_upload_bytes} bytes per file",
                )
            h.update(chunk)
            out.write(chunk)
    return Upload(f.filename, path=path, sha256=h.hexdigest())


@router.get("", response_model=JobList, responses={401: ERRORS[401], 422: ERRORS[422]})
def read_jobs(
    sessions: SessionsDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    external_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    created_after: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
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
    job_id: str, sessions: SessionsDep, storage: StorageDep, tenant: TenantDep
) -> Response:
    """Delete the job, its pages, lines and webhook events, and its stored files (those no
    other job uses). A page being read meanwhile finishes into nothing."""
    delete_job(sessions=sessions, storage=storage, tenant_id=tenant, job_id=job_id)
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
    reading them again can only fail again); answers how many."""
    n = jobs.retry(
        sessions=sessions, send=sender, settings=settings, tenant_id=tenant, job_id=job_id
    )
    return RetryBody(job_id=job_id, requeued=n)
