"""The service path in one process, for ``htrq transcribe``.

Job rows, blob store, queue messages and the batch code are the same as in the service; only
the broker is replaced by an in-process queue, and without ``HTRQ_DATABASE_URL`` the database
is a throwaway SQLite file (migrated with the same Alembic revisions).
"""

from __future__ import annotations

import heapq
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from htrq import jobs
from htrq.errors import PageError
from htrq.inputs import inspect_upload
from htrq.jobs.uploads import Upload
from htrq.resources import ErrorInfo, PageResource
from htrq.settings import Settings
from htrq.tenants import default_tenant
from htrq.tenants.secretbox import SecretBox
from migrations import upgrade
from worker.serving.app import load_context
from worker.serving.batch import process_batch


class LocalQueue:
    """Page ids waiting to run, each with the time it becomes due (for re-send backoff)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    def __call__(
        self, page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None
    ) -> None:
        # One process reads every page with its one model: the queue name does not matter.
        due = time.monotonic() + countdown
        for pid in page_ids:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, str(pid)))

    def __len__(self) -> int:
        return len(self._heap)

    def take(self, n: int) -> list[str]:
        """Up to ``n`` due ids; waits for the earliest if none is due yet."""
        if self._heap and self._heap[0][0] > time.monotonic():
            time.sleep(self._heap[0][0] - time.monotonic())
        out: list[str] = []
        while self._heap and len(out) < n and self._heap[0][0] <= time.monotonic():
            out.append(heapq.heappop(self._heap)[2])
        return out


def transcribe(
    files: Sequence[Path],
    *,
    settings: Settings,
    mode: str = "page",
    progress: Callable[[str], None] = lambda _: None,
) -> list[PageResource]:
    """Submit ``files`` as jobs, run every page through the batch code, return the pages.

    Files go in jobs of at most ``HTRQ_MAX_PAGES_PER_JOB`` pages each, in order (a folder of
    more pages than one job may hold is read as several jobs); a file refused as a whole
    (say, one PDF over the page limit by itself) comes back as one failed page. When no file
    is readable at all, the first refusal is raised, as the API answers such a request.
    """
    uploads = [Upload(filename=p.name, path=p) for p in files]
    with tempfile.TemporaryDirectory(prefix="htrq-") as tmp:
        database_url = settings.database_url
        if database_url is None:
            database_url = f"sqlite:///{Path(tmp) / 'htrq.sqlite'}"
            # A throwaway database refers to throwaway blobs, wherever HTRQ_STORAGE_URL points.
            settings = settings.model_copy(
                update={"storage_dir": Path(tmp) / "blobs", "storage_url": None}
            )
            upgrade(database_url)  # a configured database is migrated by `htrq migrate`
        queue = LocalQueue()
        progress(f"loading model {settings.model}")
        ctx = load_context(settings, database_url=database_url, send=queue)
        tenant = default_tenant(ctx.sessions, box=SecretBox.of(settings.secret_key))
        pages: list[PageResource] = []
        refusals: list[PageError] = []
        for part in _parts(uploads, settings.max_pages_per_job):
            try:
                job, _ = jobs.submit(
                    sessions=ctx.sessions,
                    storage=ctx.storage,
                    send=queue,
                    settings=settings,
                    tenant_id=tenant,
                    uploads=part,
                    mode=mode,
                )
            except PageError as exc:  # the whole part refused: one file on its own
                pages.append(_refused(part[0], exc, len(pages)))
                refusals.append(exc)
                continue
            # Files refused at submit are pages already failed; they never reach the queue.
            total, done, started = len(job.pages), job.counts.failed, time.monotonic()
            while len(queue):
                report = process_batch(queue.take(settings.flush_every), ctx)
                done += report.succeeded + report.failed
                rate = done / max(1e-9, time.monotonic() - started)
                progress(f"{done}/{total} pages ({rate:.2f} pages/s)")
            pages += [
                jobs.get_page(
                    sessions=ctx.sessions,
                    tenant_id=tenant,
                    job_id=job.id,
                    index=p.index,
                    review_below=settings.review_below,
                ).model_copy(update={"index": len(pages) + i})
                for i, p in enumerate(job.pages)
            ]
        ctx.sessions.kw["bind"].dispose()
        if len(refusals) == len(pages):  # nothing readable at all: as the API, refuse
            raise refusals[0]
        return pages


def _parts(uploads: list[Upload], max_pages: int) -> list[list[Upload]]:
    """Consecutive runs of files of at most ``max_pages`` pages each (a file's own pages are
    counted from its header; one that cannot be read counts one)."""
    parts: list[list[Upload]] = []
    count = 0
    for up in uploads:
        try:
            n = inspect_upload(up.source, max_pages=max_pages).pages
        except PageError:
            n = 1
        if not parts or count + n > max_pages:
            parts.append([])
            count = 0
        parts[-1].append(up)
        count += n
    return parts


def _refused(up: Upload, exc: PageError, index: int) -> PageResource:
    return PageResource(
        id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        index=index,
        status="failed",
        filename=up.filename,
        frame=0,
        width=None,
        height=None,
        text=None,
        confidence=None,
        lines=[],
        error=ErrorInfo(code=exc.code, message=exc.message),
        attempts=0,
        model=None,
        started_at=None,
        finished_at=None,
    )
