"""End to end: real ``htrq worker`` and ``htrq api`` processes on Redis and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from htrq.models import Job, Line, Page
from htrq.settings import Settings
from tests.conftest import S3Server
from tests.images import corrupt_png, page_png
from tests.pdfs import broken_pdf
from tests.services import Processes, poll_job, service_env, wait_for

pytestmark = pytest.mark.slow


def test_a_job_with_a_corrupt_file_ends_partial_with_every_row_right(
    processes: Processes, settings: Settings, engine: Engine, tiny_model: Path
) -> None:
    """Worker + API processes: good pages succeed in batches, the corrupt ones fail alone.

    The corrupt PNG passes the upload check (its header reads) and fails in the worker; the
    broken PDF is failed at submit and never reaches the queue.
    """
    env = service_env(settings)
    _, worker_log = processes.worker("w1", env)
    url = processes.api(env)

    files = [("files", (f"p{i}.png", page_png(f"page {i}"), "image/png")) for i in range(5)]
    files.insert(2, ("files", ("broken.png", corrupt_png(), "image/png")))
    files.insert(5, ("files", ("broken.pdf", broken_pdf(), "application/pdf")))
    r = httpx.post(f"{url}/v1/jobs", files=files, data={"external_id": "e2e-partial"}, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    job = poll_job(url, job_id)
    assert job["status"] == "partial"
    assert job["counts"] == {"queued": 0, "running": 0, "succeeded": 5, "failed": 2}

    with engine.connect() as conn:
        db_job = conn.execute(select(Job).where(Job.id == job_id)).one()
        pages = conn.execute(select(Page).where(Page.job_id == job_id).order_by(Page.index)).all()
        lines = conn.execute(
            select(Line).join(Page, Line.page_id == Page.id).where(Page.job_id == job_id)
        ).all()
    assert (db_job.external_id, db_job.mode) == ("e2e-partial", "page")
    assert [p.index for p in pages] == list(range(7))
    assert [p.filename for p in pages] == [
        "p0.png",
        "p1.png",
        "broken.png",
        "p2.png",
        "p3.png",
        "broken.pdf",
        "p4.png",
    ]
    for p in pages:
        assert p.lease_until is None and p.finished_at is not None
        if p.filename == "broken.pdf":  # failed at submit: never claimed
            assert (p.status, p.error_code, p.text) == ("failed", "invalid_pdf", None)
            assert (p.attempts, p.started_at, p.model, p.width) == (0, None, None, None)
            continue
        assert p.attempts == 1 and p.started_at is not None and p.started_at <= p.finished_at
        if p.filename == "broken.png":
            assert (p.status, p.error_code, p.text) == ("failed", "invalid_image", None)
        else:
            assert (p.status, p.error_code, p.model) == ("succeeded", None, str(tiny_model))
            assert p.text is not None and 0 <= p.confidence <= 1
            assert (p.width, p.height) == (160, 32)
    by_page: dict[object, list[Line]] = {}
    for ln in lines:
        by_page.setdefault(ln.page_id, []).append(ln)
    good = [p for p in pages if p.status == "succeeded"]
    assert {p.id for p in good} == set(by_page)
    for p in good:
        # The segmenter finds the one line of text, a box inside the page.
        (ln,) = by_page[p.id]
        assert (ln.index, ln.text) == (0, p.text)
        assert 0 <= ln.x0 < ln.x1 <= 160 and 0 <= ln.y0 < ln.y1 <= 32

    page = httpx.get(f"{url}/v1/jobs/{job_id}/pages/2", timeout=10).json()
    assert page["error"]["code"] == "invalid_image" and page["attempts"] == 1
    page = httpx.get(f"{url}/v1/jobs/{job_id}/pages/5", timeout=10).json()
    assert page["error"]["code"] == "invalid_pdf" and page["attempts"] == 0
    page = httpx.get(f"{url}/v1/jobs/{job_id}/pages/0", timeout=10).json()
    assert page["status"] == "succeeded" and (page["width"], page["height"]) == (160, 32)
    (stored,) = by_page[pages[0].id]
    assert [ln["bbox"] for ln in page["lines"]] == [[stored.x0, stored.y0, stored.x1, stored.y1]]

    # Only the six pages that were queued reach the worker.
    sizes = [int(n) for n in re.findall(rb"batch of (\d+)", worker_log.read_bytes())]
    assert sum(sizes) == 6 and max(sizes) > 1, sizes  # celery-batches grouped the pages


def test_a_worker_killed_mid_batch_loses_no_page_and_duplicates_none(
    processes: Processes, settings: Settings, engine: Engine
) -> None:
    """SIGKILL during a batch; a second worker finishes every page exactly once."""
    settings = settings.model_copy(
        update={"lease_seconds": 4, "queued_grace_seconds": 3, "max_attempts": 3}
    )
    env = service_env(settings)
    first, _ = processes.worker("doomed", env)
    url = processes.api(env)
    files = [("files", (f"p{i}.png", page_png(f"line {i}"), "image/png")) for i in range(12)]
    r = httpx.post(f"{url}/v1/jobs", files=files, timeout=30)
    job_id = r.json()["id"]

    def running() -> int:
        with engine.connect() as conn:
            q = select(func.count()).where(Page.job_id == job_id, Page.status == "running")
            return conn.execute(q).scalar_one()

    wait_for(lambda: running() > 0, "a batch to start", first, interval=0.01)
    processes.kill(first)
    stranded = running()
    assert stranded > 0, "the worker finished its batch before the kill landed"

    processes.worker("rescuer", env)
    job = poll_job(url, job_id)
    assert job["status"] == "succeeded"

    with engine.connect() as conn:
        pages = conn.execute(select(Page).where(Page.job_id == job_id)).all()
        line_counts = dict(
            conn.execute(
                select(Line.page_id, func.count())
                .join(Page, Line.page_id == Page.id)
                .where(Page.job_id == job_id)
                .group_by(Line.page_id)
            ).all()
        )
    assert len(pages) == 12
    assert all(p.status == "succeeded" and p.error_code is None for p in pages)
    assert all(line_counts.get(p.id) == 1 for p in pages)  # one set of lines per page
    # The pages the dead worker held were claimed again once; no page ran more than twice.
    assert sum(p.attempts == 2 for p in pages) >= stranded
    assert max(p.attempts for p in pages) <= 2


def test_api_and_worker_without_a_shared_disk_meet_in_the_bucket(
    processes: Processes, s3_settings: Settings, s3_server: S3Server, tmp_path: Path
) -> None:
    """API and worker with different local directories and one s3:// URL: the worker reads
    what the API stored, the job succeeds, and the bucket holds the uploaded bytes."""
    assert s3_settings.storage_url
    worker_disk, api_disk = tmp_path / "worker-disk", tmp_path / "api-disk"
    processes.worker("w1", service_env(s3_settings.model_copy(update={"storage_dir": worker_disk})))
    url = processes.api(service_env(s3_settings.model_copy(update={"storage_dir": api_disk})))

    pages = [page_png("first page"), page_png("second page")]
    files = [("files", (f"p{i}.png", data, "image/png")) for i, data in enumerate(pages)]
    r = httpx.post(f"{url}/v1/jobs", files=files, timeout=30)
    assert r.status_code == 201, r.text
    job = poll_job(url, r.json()["id"])
    assert job["status"] == "succeeded"
    assert job["counts"] == {"queued": 0, "running": 0, "succeeded": 2, "failed": 0}

    prefix = s3_settings.storage_url.split("/", 3)[3]
    keys = [hashlib.sha256(data).hexdigest() for data in pages]
    assert s3_server.objects(prefix) == {
        f"{prefix}/{k[:2]}/{k[2:4]}/{k}": data for k, data in zip(keys, pages, strict=True)
    }
    assert not worker_disk.exists() and not api_disk.exists()  # nothing went through a disk
