"""Promises of the README and docs/ that had no test that would fail if they broke."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq import jobs
from htrq.db import make_engine, make_sessions
from htrq.jobs.claims import claim_pages
from htrq.models import Job, Page
from htrq.queue import CelerySender, make_celery, model_queue, page_queue
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import default_tenant
from tests.images import page_png
from worker.recognition.pipeline import Pipeline
from worker.recognition.reading import LineReader
from worker.serving.batch import BatchContext, backoff, process_batch
from worker.serving.sweeper import sweep_once


class Broken:
    """A recognizer that always fails, as a model on a sick GPU would."""

    def __call__(self, crops):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: device-side assert")


def test_backoff_doubles_from_the_first_delay_and_is_capped(settings: Settings) -> None:
    """HTRQ_RETRY_BACKOFF 2 and HTRQ_RETRY_BACKOFF_MAX 10: 2, 4, 8, 10, 10 seconds."""
    s = settings.model_copy(update={"retry_backoff": 2, "retry_backoff_max": 10})
    assert [backoff(s, attempt) for attempt in range(1, 6)] == [2, 4, 8, 10, 10]


def _broken_model_context(s: Settings, sessions: sessionmaker[Session], send: Any) -> BatchContext:
    """A worker's batch context whose model fails on every line (a transient error)."""
    return BatchContext(
        settings=s,
        sessions=sessions,
        storage=open_store(s),
        pipeline=Pipeline(read=LineReader(Broken(), max_aspect=12.0)),
        model_name="broken",
        send=send,
    )


def test_claims_failing_in_a_row_back_off_doubling_and_capped(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """With the database down, each group that cannot be claimed is re-sent twice as late as
    the one before (capped); a claim that works starts again from the first delay."""
    s = settings.model_copy(update={"retry_backoff": 1, "retry_backoff_max": 8})
    down = make_sessions(
        make_engine(
            "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
        )
    )
    sent: list[tuple[list[str], float]] = []
    ctx = _broken_model_context(
        s, down, lambda ids, countdown=0: sent.append((list(ids), countdown))
    )
    page = str(uuid.uuid4())
    for _ in range(5):
        assert process_batch([page], ctx).requeued == 1
    assert sent == [([page], delay) for delay in (1, 2, 4, 8, 8)]
    ctx.sessions = sessions  # the database is back: the claim works (and finds nothing)
    assert process_batch([page], ctx).claimed == 0
    ctx.sessions = down
    process_batch([page], ctx)
    assert sent[-1] == ([page], 1)


def test_a_transient_failure_is_sent_again_through_the_broker_with_its_countdown(
    sessions: sessionmaker[Session], settings: Settings, broker_url: str
) -> None:
    """A model error re-sends the page on Redis (not an in-process queue) with a Celery ETA
    the backoff ahead, and the page is queued again with its attempt counted."""
    s = settings.model_copy(update={"retry_backoff": 30, "retry_backoff_max": 300})
    ctx = _broken_model_context(s, sessions, CelerySender(make_celery(s)))
    job, _ = jobs.submit(
        sessions=sessions,
        storage=ctx.storage,
        send=lambda ids, countdown=0, queue=None: None,  # the first message is not what is tested
        settings=s,
        tenant_id=default_tenant(sessions),
        uploads=[jobs.Upload("p.png", page_png())],
    )
    before = time.time()
    report = process_batch([str(job.pages[0].id)], ctx)
    assert report.requeued == 1
    # Outside a worker's task the page's origin is unknown: it goes to its model's queue.
    (raw,) = redis.Redis.from_url(broker_url).lrange(model_queue(s.model), 0, -1)
    message = json.loads(raw)
    eta = message["headers"]["eta"]
    from datetime import datetime

    delay = datetime.fromisoformat(eta).timestamp() - before
    assert 25 <= delay <= 40  # backoff(attempt 1) = 30 s
    assert message["headers"]["argsrepr"] == repr([str(job.pages[0].id)])
    with sessions() as session:
        page = session.get_one(Page, job.pages[0].id)
        assert (page.status, page.attempts, page.error_code) == ("queued", 1, "model_error")


def test_two_identical_submits_racing_make_one_job(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    """Two threads submit the same files under the same Idempotency-Key at once: one job,
    and both get it (one created, one repeat)."""
    sessions = make_sessions(engine)
    tenant = default_tenant(sessions)
    barrier = threading.Barrier(2)
    results: list[tuple[object, bool]] = []

    def submit() -> None:
        barrier.wait(timeout=10)
        results.append(
            jobs.submit(
                sessions=sessions,
                storage=open_store(settings),
                send=lambda ids, countdown=0, queue=None: None,
                settings=settings,
                tenant_id=tenant,
                uploads=[jobs.Upload("p.png", page_png("race"))],
                idempotency_key="racing-key",
            )
        )

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(created for _, created in results) == [False, True]
        assert len({job.id for job, _ in results}) == 1  # type: ignore[attr-defined]
        with sessions() as s:
            assert s.scalar(select(func.count()).where(Job.idempotency_key == "racing-key")) == 1
    finally:
        from htrq.jobs.deletion import delete_job

        for job, created in results:
            if created:
                delete_job(sessions=sessions, storage=open_store(settings), tenant_id=tenant,
                           job_id=job.id)  # type: ignore[attr-defined]  # fmt: skip


def test_external_id_reused_with_other_files_is_a_conflict(
    settings: Settings, broker_url: str, sessions: sessionmaker[Session]
) -> None:
    """The same external_id with other files answers 409 idempotency_conflict, naming the
    first job; with the same files it answers that job with 200."""
    app = create_app(settings)
    app.state.sessions = sessions
    with TestClient(app) as client:
        first = client.post(
            "/v1/jobs",
            files=[("files", ("a.png", page_png("a"), "image/png"))],
            data={"external_id": "dms-doc-9"},
        )
        other = client.post(
            "/v1/jobs",
            files=[("files", ("b.png", page_png("b"), "image/png"))],
            data={"external_id": "dms-doc-9"},
        )
        same = client.post(
            "/v1/jobs",
            files=[("files", ("a.png", page_png("a"), "image/png"))],
            data={"external_id": "dms-doc-9"},
        )
    assert first.status_code == 201
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    assert first.json()["id"] in other.json()["error"]["message"]
    assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])


def test_review_below_takes_effect_in_the_api(
    settings: Settings, broker_url: str, sessions: sessionmaker[Session]
) -> None:
    """HTRQ_REVIEW_BELOW decides needs_review in the page resource the API answers."""
    from htrq.jobs.claims import write_result
    from worker.recognition.pipeline import LineOutput

    job, _ = jobs.submit(
        sessions=sessions,
        storage=open_store(settings),
        send=lambda ids, countdown=0, queue=None: None,
        settings=settings,
        tenant_id=default_tenant(sessions),
        uploads=[jobs.Upload("p.png", page_png())],
    )
    with sessions() as s:
        (claim,) = claim_pages(s, [job.pages[0].id], lease_seconds=60)
        lines = [LineOutput("a", 0.95, (0, 0, 9, 9)), LineOutput("b", 0.7, (0, 10, 9, 19))]
        write_result(s, claim, text="a\nb", confidence=0.8, lines=lines, model="m", processing_ms=1)
        s.commit()
    flags = {}
    for below in (0.9, 0.6):
        app = create_app(settings.model_copy(update={"review_below": below}))
        app.state.sessions = sessions
        with TestClient(app) as client:
            page = client.get(f"/v1/jobs/{job.id}/pages/0").json()
        flags[below] = [ln["needs_review"] for ln in page["lines"]]
    assert flags == {0.9: [False, True], 0.6: [False, False]}


def test_readyz_is_503_when_the_database_is_down(settings: Settings) -> None:
    """With a database that does not answer, /readyz says which dependency is down."""
    dead = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"}
    )
    with TestClient(create_app(dead)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"database": False, "broker": True}


def test_retry_over_http_requeues_failed_pages_and_413_too_many_pages(
    settings: Settings, broker_url: str, sessions: sessionmaker[Session]
) -> None:
    """POST /retry answers how many pages went back (and puts them on Redis); a request of
    more pages than HTRQ_MAX_PAGES_PER_JOB is 413 too_many_pages."""
    from sqlalchemy import update

    app = create_app(settings.model_copy(update={"max_pages_per_job": 2}))
    app.state.sessions = sessions
    files = [("files", (f"{i}.png", page_png(str(i)), "image/png")) for i in range(2)]
    with TestClient(app) as client:
        job = client.post("/v1/jobs", files=files).json()
        with sessions() as s:
            s.execute(
                update(Page)
                .where(Page.job_id == job["id"])
                .values(status="failed", error_code="model_error", attempts=1)
            )
            s.commit()
        queue = redis.Redis.from_url(broker_url)
        name = page_queue(settings, model=None, tenant_id=default_tenant(sessions))
        queue.delete(name)
        r = client.post(f"/v1/jobs/{job['id']}/retry")
        assert r.status_code == 200 and r.json()["requeued"] == 2
        assert queue.llen(name) == 2
        three = [("files", (f"{i}.png", page_png(str(i)), "image/png")) for i in range(3)]
        r = client.post("/v1/jobs", files=three)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pages"


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_the_sweeper_thread_takes_back_expired_leases(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    """The worker's sweeper thread itself (not one sweep called by hand) puts a page whose
    lease expired back to queued and sends it again, within a few sweep intervals."""
    from worker.serving.sweeper import SweeperThread

    sessions = make_sessions(engine)
    tenant = default_tenant(sessions)
    storage = open_store(settings)
    job, _ = jobs.submit(
        sessions=sessions, storage=storage, send=lambda ids, countdown=0, queue=None: None,
        settings=settings, tenant_id=tenant, uploads=[jobs.Upload("p.png", page_png("swept"))],
    )  # fmt: skip
    with sessions.begin() as s:
        claim_pages(s, [job.pages[0].id], lease_seconds=-1)  # a worker that died
    sent: list[str] = []
    sender = CelerySender(make_celery(settings))
    sender_calls = sender.__call__

    class Recording(CelerySender):
        def __call__(self, page_ids, countdown=0, *, queue=None):  # type: ignore[no-untyped-def]
            sent.extend(page_ids)
            sender_calls(page_ids, countdown, queue=queue)

    thread = SweeperThread(
        sessions=sessions,
        sender=Recording(sender.app),
        settings=settings.model_copy(update={"sweep_interval": 0.2}),
        storage=storage,
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while str(job.pages[0].id) not in sent and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        thread.stop()
        thread.join(timeout=10)
    try:
        assert str(job.pages[0].id) in sent
        with sessions() as s:
            page = s.get_one(Page, job.pages[0].id)
            assert (page.status, page.error_code) == ("queued", "worker_lost")
    finally:
        from htrq.jobs.deletion import delete_job

        delete_job(sessions=sessions, storage=storage, tenant_id=tenant, job_id=job.id)


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_with_the_broker_down_a_sweep_still_takes_back_leases_but_resends_nothing(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Broker unreachable: expired leases still go back to queued in the database (sending
    them fails and is left to the next sweep), and long-queued pages are not taken for lost
    messages, since the queue's depth cannot be known."""
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    job, _ = jobs.submit(
        sessions=sessions, storage=open_store(settings),
        send=lambda ids, countdown=0, queue=None: None,
        settings=settings, tenant_id=default_tenant(sessions),
        uploads=[jobs.Upload("a.png", page_png("a")), jobs.Upload("b.png", page_png("b"))],
    )  # fmt: skip
    with sessions() as s:
        claim_pages(s, [job.pages[0].id], lease_seconds=-1)
        s.commit()
    sender = CelerySender(make_celery(down))
    with pytest.raises(Exception):  # noqa: B017 - kombu raises its own OperationalError
        sweep_once(sessions=sessions, sender=sender, settings=down.model_copy(
            update={"queued_grace_seconds": 0.001}))  # fmt: skip
    with sessions() as s:
        taken, waiting = (s.get_one(Page, p.id) for p in job.pages)
        assert taken.status == "queued" and taken.error_code == "worker_lost"
        assert waiting.status == "queued" and waiting.error_code is None


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("HTRQ_SEGMENTER", "projection", "segmenter"),
        ("HTRQ_PDF_DPI", "150", "pdf_dpi"),
        ("HTRQ_LINE_MARGIN", "9", "line_margin"),
    ],
)
def test_pipeline_settings_reach_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, field: str
) -> None:
    """HTRQ_SEGMENTER, HTRQ_PDF_DPI and HTRQ_LINE_MARGIN set in the environment are what
    the worker's pipeline (built by build_pipeline) uses."""
    from htrq.settings import load_settings
    from worker.recognition.pipeline import build_pipeline
    from worker.segmentation.projection import ProjectionSegmenter

    class Rec:
        width, height = 384, 32

        def __call__(self, crops):  # type: ignore[no-untyped-def]
            return []

    monkeypatch.setenv(name, value)
    pipeline = build_pipeline(load_settings(), Rec())  # type: ignore[arg-type]
    if field == "segmenter":
        assert isinstance(pipeline.segmenter, ProjectionSegmenter)
    elif field == "pdf_dpi":
        assert pipeline.pdf_dpi == 150
    else:
        assert pipeline.line_margin == 9


@pytest.mark.slow
def test_torch_threads_and_dtype_take_effect_in_a_worker_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTRQ_TORCH_THREADS sets torch's threads in the worker process; HTRQ_DTYPE=bfloat16 on
    the CPU loads the model in float32 (with a warning), as docs/settings.md says."""
    import subprocess
    import sys

    code = (
        "import torch, worker.serving.app as a\n"
        "from htrq.settings import load_settings\n"
        "s = load_settings()\n"
        "torch.set_num_threads(s.threads_per_process(a.available_cpus()))\n"
        "r = a.load_recognizer(s)\n"
        "print(torch.get_num_threads(), next(r.model.parameters()).dtype)\n"
    )
    env = {
        "HTRQ_MODEL": settings.model,
        "HTRQ_TORCH_THREADS": "1",
        "HTRQ_DTYPE": "bfloat16",
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
        # This checkout's code, whichever one the interpreter has installed.
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "torch.float32"]
    assert "using float32 on the CPU" in out.stderr
