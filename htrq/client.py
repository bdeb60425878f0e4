"""A Python client of the htrq HTTP API, for a DMS and for ``htrq submit``.

    from htrq.client import Client

    with Client("https://htrq.example.org", api_key="htrq_...") as htrq:
        job = htrq.submit(["letter-p1.jpg", "letter-p2.jpg"], external_id="dms-4711")
        job = htrq.wait(job.id)
        text = htrq.export(job.id, "txt").decode()

Requests that fail to connect, time out or are cut off, and answers 429 (over the tenant's
rate) and 502/503/504, are sent again with backoff, waiting at least the answer's
``Retry-After``. A submit always carries an ``Idempotency-Key`` (a new UUID unless you
give one) and sends the same key again, so a submit whose answer was lost makes one job,
not two. The API's errors raise :class:`ApiError` with the error's code.
"""

from __future__ import annotations

import builtins
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from htrq.resources import (
    JobList,
    JobResource,
    JobSummary,
    LineResource,
    ModelList,
    ModelResource,
    PageResource,
)

#: Answers worth sending the request again for: the service is restarting or overloaded.
#: Answers of a request the API did not act on: sent again. 429 and 503 say when, in
#: Retry-After.
RETRY_STATUS = frozenset({429, 502, 503, 504})
#: The longest Retry-After the client waits out before sending again.
MAX_RETRY_AFTER = 60.0
FINISHED = ("succeeded", "failed", "partial")

FileSpec = str | Path | tuple[str, bytes]


class ApiError(Exception):
    """An error answer of the API: its HTTP status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.retries, self.backoff = retries, backoff

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- jobs ---------------------------------------------------------------------------------

    def submit(
        self,
        files: Sequence[FileSpec],
        *,
        mode: str = "page",
        external_id: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        model: str | None = None,
        language: str | None = None,
        reuse: bool = True,
    ) -> JobResource:
        """Upload files as one job (201 new, or 200 for a repeat of the same key); ``model``
        names one of the server's ``HTRQ_MODELS`` (default: the server's default),
        ``language`` one of its ``HTRQ_LANGUAGES`` or ``none`` (default: its default);
        ``reuse=False`` has every page read afresh, even one the tenant already had read."""
        key = idempotency_key or str(uuid.uuid4())
        data = {"mode": mode}
        if external_id is not None:
            data["external_id"] = external_id
        if callback_url is not None:
            data["callback_url"] = callback_url
        if model is not None:
            data["model"] = model
        if language is not None:
            data["language"] = language
        if not reuse:
            data["reuse"] = "false"

        def send() -> httpx.Response:
            opened = [_file_part(f) for f in files]  # fresh each attempt: streams are read
            try:
                return self.http.post(
                    "/v1/jobs", files=opened, data=data, headers={"Idempotency-Key": key}
                )
            finally:
                for _, (_, fh, _) in opened:
                    if hasattr(fh, "close"):
                        fh.close()

        return JobResource.model_validate(self._call(send))

    def get(self, job_id: uuid.UUID | str) -> JobResource:
        return JobResource.model_validate(self._get(f"/v1/jobs/{job_id}"))

    def wait(
        self, job_id: uuid.UUID | str, *, timeout: float | None = None, interval: float = 1.0
    ) -> JobResource:
        """Poll until the job has finished (succeeded, failed or partial)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} has not finished after {timeout} s")
            time.sleep(interval)

    def page(self, job_id: uuid.UUID | str, index: int) -> PageResource:
        return PageResource.model_validate(self._get(f"/v1/jobs/{job_id}/pages/{index}"))

    def pages(self, job_id: uuid.UUID | str) -> list[PageResource]:
        return [self.page(job_id, p.index) for p in self.get(job_id).pages]

    def export(self, job_id: uuid.UUID | str, fmt: str = "txt") -> bytes:
        """The finished job as ``txt``, ``json``, ``alto`` (zip), ``page`` (zip) or ``pdf``."""
        r = self._request("GET", f"/v1/jobs/{job_id}/export", params={"format": fmt})
        return r.content

    def retry(self, job_id: uuid.UUID | str) -> int:
        """Re-queue the job's failed pages; how many."""
        return int(self._call(lambda: self.http.post(f"/v1/jobs/{job_id}/retry"))["requeued"])

    def delete(self, job_id: uuid.UUID | str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def list(
        self,
        *,
        status: str | None = None,
        external_id: str | None = None,
        created_after: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        """One page of the tenant's jobs, newest first."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (
            ("status", status),
            ("external_id", external_id),
            ("created_after", created_after.isoformat() if created_after else None),
            ("cursor", cursor),
        ):
            if value is not None:
                params[name] = value
        return JobList.model_validate(self._get("/v1/jobs", params=params))

    def iter_jobs(self, **filters: Any) -> Iterator[JobSummary]:
        """Every job that matches, following the cursors."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # -- corrections and models ---------------------------------------------------------------

    def correct(
        self,
        job_id: uuid.UUID | str,
        page: int,
        line: int,
        text: str | None = None,
        *,
        reviewed: bool | None = None,
    ) -> LineResource:
        """Correct a line's reading (``text``) or confirm it as read (``reviewed=True``)."""
        body: dict[str, Any] = {}
        if text is not None:
            body["text"] = text
        if reviewed is not None:
            body["reviewed"] = reviewed
        path = f"/v1/jobs/{job_id}/pages/{page}/lines/{line}"
        return LineResource.model_validate(self._call(lambda: self.http.patch(path, json=body)))

    def train(
        self,
        name: str,
        *,
        base: str = "builtin",
        steps: int | None = None,
        lines_since: datetime | None = None,
        callback_url: str | None = None,
    ) -> ModelResource:
        """Train a model of yours on your corrected and confirmed lines (``POST /v1/models``);
        a job reads with it once it is ``ready``: ``submit(..., model=name)``."""
        body: dict[str, Any] = {"name": name, "base": base}
        if steps is not None:
            body["steps"] = steps
        if lines_since is not None:
            body["lines_since"] = lines_since.isoformat()
        if callback_url is not None:
            body["callback_url"] = callback_url
        return ModelResource.model_validate(
            self._call(lambda: self.http.post("/v1/models", json=body))
        )

    def model(self, model_id: uuid.UUID | str) -> ModelResource:
        return ModelResource.model_validate(self._get(f"/v1/models/{model_id}"))

    def models(self) -> builtins.list[ModelResource]:
        return ModelList.model_validate(self._get("/v1/models")).models

    def wait_model(
        self, model_id: uuid.UUID | str, *, timeout: float | None = None, interval: float = 5.0
    ) -> ModelResource:
        """Poll until the model's training has ended (ready, failed or cancelled)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            model = self.model(model_id)
            if model.status in ("ready", "failed", "cancelled"):
                return model
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"model {model_id} is still {model.status} after {timeout} s")
            time.sleep(interval)

    def delete_model(self, model_id: uuid.UUID | str) -> None:
        """Delete a model, or cancel its training (call again to delete it)."""
        self._request("DELETE", f"/v1/models/{model_id}")

    # -- transport ----------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._call(lambda: self.http.get(path, params=params))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._send(lambda: self.http.request(method, path, **kwargs))

    def _call(self, send: Callable[[], httpx.Response]) -> Any:
        return self._send(send).json()

    def _send(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            wait = self.backoff * 2**attempt
            try:
                r = send()
            except httpx.TransportError:
                if last:
                    raise
            else:
                if r.status_code not in RETRY_STATUS or last:
                    if r.status_code >= 400:
                        raise _error(r)
                    return r
                wait = max(wait, _retry_after(r))
            time.sleep(wait)
        raise AssertionError("unreachable")


def _file_part(f: FileSpec) -> tuple[str, tuple[str, Any, str]]:
    if isinstance(f, tuple):
        name, data = f
        return "files", (name, data, _mime(name))
    path = Path(f)
    return "files", (path.name, path.open("rb"), _mime(path.name))


def _mime(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _retry_after(r: httpx.Response) -> float:
    """The answer's Retry-After in seconds (0 when it gives none in seconds), at most
    :data:`MAX_RETRY_AFTER`."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(r.headers.get("Retry-After", 0))))
    except ValueError:
        return 0.0


def _error(r: httpx.Response) -> ApiError:
    try:
        err = r.json()["error"]
        return ApiError(r.status_code, err["code"], err["message"])
    except (ValueError, KeyError, TypeError):
        return ApiError(r.status_code, "http_error", r.text[:500])
