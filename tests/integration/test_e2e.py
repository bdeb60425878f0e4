"""End to end: real ``htrq worker`` and ``htrq api`` processes on Redis and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, func, select

from htrq.models import Job, Line, Page, utcnow
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


def _gate(blobs: Path, contents: list[bytes]) -> Callable[[], None]:
    """Named pipes where the files of ``contents`` are to be stored, before they are
    uploaded: the store keeps what is already there, and a worker that reads one blocks on
    it, inside its batch with its pages claimed, for as long as the test wants. The function
    returned puts the real files in their place."""
    paths = []
    for data in contents:
        key = hashlib.sha256(data).hexdigest()
        path = blobs / key[:2] / key[2:4] / key
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        paths.append((path, data))

    def release() -> None:
        for path, data in paths:
            tmp = path.with_name(path.name + ".back")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # a reader already blocked on the pipe stays blocked

    return release


def _doomed_worker(processes: Processes, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker whose pool process has loaded its model: from here a page it receives is
    claimed within a flush interval, long before its message's visibility timeout."""
    doomed, log = processes.worker("doomed", env)
    wait_for(lambda: b"worker process ready" in log.read_bytes(), "its model", doomed, log)
    return doomed


def _kill_inside_a_batch(
    processes: Processes, doomed: subprocess.Popen[bytes], engine: Engine, job_id: str
) -> list[Page]:
    """Wait until ``doomed`` has claimed a batch (it cannot finish it: its files are pipes
    nobody writes), SIGKILL it; the pages it held, still ``running``."""

    def claimed() -> list[Page]:
        with engine.connect() as conn:
            q = select(Page).where(Page.job_id == job_id, Page.status == "running")
            return list(conn.execute(q).all())

    wait_for(lambda: bool(claimed()), "the worker to claim a batch", doomed)
    processes.kill(doomed)
    stranded = claimed()
    assert stranded and all(p.attempts == 1 for p in stranded)
    return stranded


def _submit(url: str, contents: list[bytes]) -> str:
    files = [("files", (f"p{i}.png", data, "image/png")) for i, data in enumerate(contents)]
    r = httpx.post(f"{url}/v1/jobs", files=files, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _unacked(broker_url: str) -> dict[bytes, str]:
    """Page id by delivery tag of the messages delivered to a consumer and not acknowledged:
    kombu's Redis transport keeps them in the ``unacked`` hash until they are acknowledged,
    or until a consumer restores them to the queue once the visibility timeout has passed."""
    client = redis.Redis.from_url(broker_url)
    try:
        held = client.hgetall("unacked")
    finally:
        client.close()
    ids = {}
    for tag, raw in held.items():
        message = json.loads(raw)[0]  # [message, exchange, routing key]
        args = json.loads(base64.b64decode(message["body"]))[0]  # [args, kwargs, embed]
        ids[tag] = str(args[0])
    return ids


def _every_page_once(engine: Engine, job_id: str, stranded: list[Page]) -> None:
    """Every page succeeded with one set of lines; the stranded ones were claimed again
    after the dead worker's claim (on a starved machine a group may also run past its time
    limit and be read again page by page, so "again" is at least once more)."""
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
    again = {p.id for p in stranded}
    assert all(p.attempts >= 2 for p in pages if p.id in again)


def test_a_killed_workers_messages_come_back_by_late_acks_alone(
    processes: Processes, settings: Settings, engine: Engine, broker_url: str
) -> None:
    """Late acks on their own, with no sweeper in reach (the first sweep is an hour away).

    A worker is SIGKILLed inside a batch. The messages it held stay unacknowledged in Redis
    and come back after the visibility timeout (at least twice the lease, so by then the dead
    worker's leases have run out); a second worker started after it takes over the expired
    claims and finishes every page exactly once.
    """
    settings = settings.model_copy(
        update={
            "lease_seconds": 30,
            "sweep_interval": 3600,
            "queued_grace_seconds": 3600,
            "retry_backoff_max": 0,
            "max_attempts": 3,
        }
    )
    timeout = settings.visibility_timeout
    assert timeout == 60 and timeout >= 2 * settings.lease_seconds
    env = service_env(settings)
    url = processes.api(env)
    doomed = _doomed_worker(processes, env)
    contents = [page_png(f"line {i}") for i in range(12)]
    release = _gate(settings.storage_dir, contents)
    job_id = _submit(url, contents)

    stranded = _kill_inside_a_batch(processes, doomed, engine, job_id)
    killed = time.monotonic()
    # Acknowledged late: the messages of the pages it claimed are still in Redis, unacknowledged.
    held = _unacked(broker_url)
    lost = {str(p.id) for p in stranded} - set(held.values())
    assert not lost, f"the messages of {len(lost)} claimed pages were acknowledged: lost for good"
    release()
    time.sleep(max(0.0, killed + timeout + 2 - time.monotonic()))
    with engine.connect() as conn:
        now = utcnow()
        still = conn.execute(select(Page).where(Page.id.in_([p.id for p in stranded]))).all()
    # Nobody took them back in the meantime; their leases have run out.
    assert all(p.status == "running" and p.attempts == 1 for p in still)
    assert all(p.lease_until < now for p in still)

    # Its consumer restores the messages whose visibility timeout passed when it starts.
    _, log = processes.worker("rescuer", env)
    job = poll_job(url, job_id)
    assert job["status"] == "succeeded", job
    _every_page_once(engine, job_id, stranded)
    assert not set(held) & set(_unacked(broker_url))  # all the dead worker held came back
    assert b"sweeper:" not in log.read_bytes()  # and no sweep had a hand in it


def test_the_sweeper_alone_rescues_a_killed_workers_pages(
    processes: Processes, settings: Settings, engine: Engine, broker_url: str
) -> None:
    """The sweeper on its own, with Redis redelivery out of reach (a ten-minute visibility
    timeout): it takes back the dead worker's expired leases and re-sends the pages whose
    messages the dead worker had reserved but not started."""
    settings = settings.model_copy(
        update={
            "lease_seconds": 30,
            "sweep_interval": 0.5,
            "queued_grace_seconds": 3,
            "retry_backoff_max": 600,
            "max_attempts": 3,
        }
    )
    assert settings.visibility_timeout > 600
    env = service_env(settings)
    url = processes.api(env)
    # The doomed worker sweeps too, but not before it dies: only the rescuer's sweeper counts.
    doomed = _doomed_worker(
        processes, service_env(settings.model_copy(update={"sweep_interval": 3600}))
    )
    contents = [page_png(f"line {i}") for i in range(12)]
    release = _gate(settings.storage_dir, contents)
    job_id = _submit(url, contents)

    stranded = _kill_inside_a_batch(processes, doomed, engine, job_id)
    held = _unacked(broker_url)
    assert {str(p.id) for p in stranded} <= set(held.values())
    release()
    _, log = processes.worker("rescuer", env)
    job = poll_job(url, job_id)
    assert job["status"] == "succeeded", job
    _every_page_once(engine, job_id, stranded)

    swept = re.findall(
        rb"sweeper: (\d+) expired leases re-queued, \d+ failed, (\d+) lost messages re-sent",
        log.read_bytes(),
    )
    assert sum(int(leases) for leases, _ in swept) >= len(stranded)
    # The pages it had reserved without claiming them were re-sent as lost messages (with,
    # maybe, some the rescuer had reserved but not yet claimed: duplicates claim nothing).
    assert sum(int(lost) for _, lost in swept) >= len(held) - len(stranded)
    # None came back by redelivery: every message the dead worker held is still unacknowledged.
    assert set(held) <= set(_unacked(broker_url))


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
