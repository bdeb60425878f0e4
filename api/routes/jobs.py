"""``/v1/jobs``: submit pages, read a job and its pages, retry failed pages."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, Response, UploadFile

from api.deps import SenderDep, SessionsDep, SettingsDep, StorageDep
from api.schemas import ErrorBody, JobResource, PageResource, RetryBody
from htrq import jobs
from htrq.errors import PageError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {
    404: {"model": ErrorBody, "description": "unknown job or page"},
    409: {"model": ErrorBody, "description": "idempotency key used for other files"},
    413: {"model": ErrorBody, "description": "file or job too large"},
    415: {"model": ErrorBody, "description": "not an accepted file format"},
    422: {"model": ErrorBody, "description": "invalid request or file"},
}


@router.post(
    "",
    status_code=201,
    response_model=JobResource,
    responses={200: {"model": JobResource, "description": "repeat of a submitted job"}, **ERRORS},
)
def create_job(
    response: Response,
    settings: SettingsDep,
    sessions: SessionsDep,
    storage: StorageDep,
    sender: SenderDep,
    # Optional here so that a request without it (or with another field name) gets the
    # documented 422 no_files rather than a generic validation error.
    files: Annotated[
        list[UploadFile] | None,
        File(description="one or more page images, PDFs or TIFFs"),
    ] = None,
    external_id: Annotated[str | None, Form(max_length=255)] = None,
    mode: Annotated[Literal["page", "line"], Form()] = "page",
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobResource:
    """Upload pages; each file becomes one page or more (PDF, multi-page TIFF).

    A file that cannot be read (``invalid_pdf``, ``encrypted_pdf``, ``unsupported_format``,
    ``empty_file``, ``too_large`` in pixels) becomes one page that is ``failed`` at once with
    that code, and the other files are read as usual. The request itself is refused (4xx,
    nothing stored) when it has no files, a file over the byte limit, more pages in all than
    the job limit, or no readable file at all.

    A repeat under the same ``Idempotency-Key`` header (or ``external_id``) answers the first
    job with 200 instead of creating another.
    """
    uploads = []
    for f in files or []:
        # Read one byte over the limit to tell "at the limit" from "over it".
        data = f.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise PageError(
                "too_large",
                f"{f.filename}: over the limit of {settings.max_upload_bytes} bytes per file",
            )
        uploads.append(jobs.Upload(filename=f.filename, data=data))
    job, created = jobs.submit(
        sessions=sessions,
        storage=storage,
        send=sender,
        settings=settings,
        uploads=uploads,
        idempotency_key=idempotency_key,
        external_id=external_id,
        mode=mode,
    )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("/{job_id}", response_model=JobResource, responses=ERRORS)
def read_job(job_id: str, sessions: SessionsDep) -> JobResource:
    """The job, its pages' states and the count of pages in each state."""
    return jobs.get_job(sessions=sessions, job_id=job_id)


@router.get("/{job_id}/pages/{index}", response_model=PageResource, responses=ERRORS)
def read_page(
    job_id: str, index: int, sessions: SessionsDep, settings: SettingsDep
) -> PageResource:
    """One page's text, confidence, lines, error and attempts."""
    return jobs.get_page(
        sessions=sessions, job_id=job_id, index=index, review_below=settings.review_below
    )


@router.post("/{job_id}/retry", response_model=RetryBody, responses=ERRORS)
def retry_job(
    job_id: str, sessions: SessionsDep, sender: SenderDep, settings: SettingsDep
) -> RetryBody:
    """Put the job's failed pages back in the queue; answers how many."""
    n = jobs.retry(sessions=sessions, send=sender, settings=settings, job_id=job_id)
    return RetryBody(job_id=job_id, requeued=n)
