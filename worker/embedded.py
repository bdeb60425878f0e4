"""The service path in one process, for ``htrq transcribe``.

Job rows, blob store, queue messages and the batch code are the same as in the service; only
the broker is replaced by an in-process queue, and without ``HTRQ_DATABASE_URL`` the database
is a throwaway SQLite file (migrated with the same Alembic revisions).
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from htrq import jobs
from htrq.db import upgrade
from htrq.resources import PageResource
from htrq.settings import Settings
from worker.app import load_context
from worker.batch import process_batch


class LocalQueue:
    """Page ids waiting to run, each with the time it becomes due (for re-send backoff)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    def __call__(self, page_ids: Sequence[str], countdown: float = 0) -> None:
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
    """Submit ``files`` as one job, run every page through the batch code, return the pages."""
    uploads = [jobs.Upload(filename=p.name, data=p.read_bytes()) for p in files]
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
        job, _ = jobs.submit(
            sessions=ctx.sessions,
            storage=ctx.storage,
            send=queue,
            settings=settings,
            uploads=uploads,
            mode=mode,
        )
        # Files refused at submit are pages already failed; they never reach the queue.
        total, done, started = len(job.pages), job.counts.failed, time.monotonic()
        while len(queue):
            report = process_batch(queue.take(settings.flush_every), ctx)
            done += report.succeeded + report.failed
            rate = done / max(1e-9, time.monotonic() - started)
            progress(f"{done}/{total} pages ({rate:.2f} pages/s)")
        pages = [
            jobs.get_page(
                sessions=ctx.sessions,
                job_id=job.id,
                index=p.index,
                review_below=settings.review_below,
            )
            for p in job.pages
        ]
        ctx.sessions.kw["bind"].dispose()
        return pages
