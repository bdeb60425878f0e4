"""Completion webhooks: one event per completion, signed, delivered after refusals, and
callback URLs that may not reach internal addresses."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.db import make_sessions
from htrq.delivery.webhooks import check_callback_url, deliver_due, verify
from htrq.errors import PageError
from htrq.jobs.claims import claim_pages, release_for_retry, write_failure, write_result
from htrq.models import WebhookEvent
from htrq.settings import Settings
from htrq.storage import DirectoryStore
from htrq.tenants import default_tenant, webhook_secret
from tests.images import corrupt_png, page_png
from tests.receiver import Receiver
from tests.services import Processes, poll_job, service_env, wait_for

CALLBACK = "http://127.0.0.1:9/hook"  # never called in the in-process tests


def _submit(sessions, settings: Settings, n: int, callback: str | None = CALLBACK):
    job, _ = jobs.submit(
        sessions=sessions,
        storage=DirectoryStore(settings.storage_dir),
        send=lambda ids, countdown=0, queue=None: None,
        settings=settings,
        tenant_id=default_tenant(sessions),
        uploads=[jobs.Upload(f"{i}.png", page_png(f"page {i}")) for i in range(n)],
        callback_url=callback,
    )
    return job


def _events(sessions, job_id: uuid.UUID) -> list[WebhookEvent]:
    with sessions() as s:
        return list(
            s.scalars(
                select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.seq)
            )
        )


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_two_workers_finishing_the_last_pages_together_make_one_event(
    settings: Settings, engine: Engine
) -> None:
    """Two transactions store a job's last two pages at the same moment, twenty times over:
    each time exactly one of them completes the job and writes its event."""
    sessions = make_sessions(engine)
    for _ in range(20):
        job = _submit(sessions, settings, 2)
        with sessions.begin() as s:
            claims = claim_pages(s, [p.id for p in job.pages], lease_seconds=60)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(claim, barrier=barrier, errors=errors) -> None:  # type: ignore[no-untyped-def]
            try:
                with sessions.begin() as s:
                    barrier.wait(timeout=10)
                    write_result(
                        s, claim, text="x", confidence=0.9, lines=[], model="m", processing_ms=1
                    )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=(c,)) for c in claims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        events = _events(sessions, job.id)
        assert [e.seq for e in events] == [1]
        body = json.loads(events[0].payload)
        assert body["status"] == "succeeded" and body["counts"]["succeeded"] == 2
        jobs_resource = jobs.get_job(
            sessions=sessions, tenant_id=default_tenant(sessions), job_id=job.id
        )
        assert jobs_resource.finished_at is not None
        from htrq.jobs.deletion import delete_job

        delete_job(sessions=sessions, storage=DirectoryStore(settings.storage_dir),
                   tenant_id=default_tenant(sessions), job_id=job.id)  # fmt: skip


def test_a_retry_that_finishes_the_job_again_makes_a_second_event(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Partial (one page failed for the model), retried, finished: events 1 and 2, the
    second saying succeeded; a job without a callback gets none."""
    settings = settings.model_copy(update={"max_attempts": 1})
    job = _submit(sessions, settings, 2)
    tenant = default_tenant(sessions)
    with sessions.begin() as s:
        a, b = claim_pages(s, [p.id for p in job.pages], lease_seconds=60)
        write_result(s, a, text="x", confidence=0.9, lines=[], model="m", processing_ms=1)
        assert release_for_retry(s, b, code="model_error", message="boom") == "failed"
    first = _events(sessions, job.id)
    assert [(e.seq, json.loads(e.payload)["status"]) for e in first] == [(1, "partial")]
    assert (
        jobs.retry(
            sessions=sessions,
            send=lambda *a, **kw: None,
            settings=settings,
            tenant_id=tenant,
            job_id=job.id,
        )
        == 1
    )
    assert jobs.get_job(sessions=sessions, tenant_id=tenant, job_id=job.id).finished_at is None
    with sessions.begin() as s:
        (b,) = claim_pages(s, [b.page_id], lease_seconds=60)
        write_result(s, b, text="y", confidence=0.9, lines=[], model="m", processing_ms=1)
    events = _events(sessions, job.id)
    assert [(e.seq, json.loads(e.payload)["status"]) for e in events] == [
        (1, "partial"),
        (2, "succeeded"),
    ]
    quiet = _submit(sessions, settings, 1, callback=None)
    with sessions.begin() as s:
        (c,) = claim_pages(s, [quiet.pages[0].id], lease_seconds=60)
        write_failure(s, c, code="invalid_image", message="x")
    assert _events(sessions, quiet.id) == []


def test_callback_urls_to_internal_addresses_are_refused() -> None:
    """Loopback, private and link-local hosts are refused unless allowed; other schemes and
    hosts that do not resolve are refused always."""
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
    ):
        with pytest.raises(PageError) as exc:
            check_callback_url(url, allow_private=False)
        assert exc.value.code == "callback_not_allowed", url
        check_callback_url(url, allow_private=True)
    for url in ("ftp://example.org/x", "http:///nohost", "file:///etc/passwd"):
        with pytest.raises(PageError) as exc:
            check_callback_url(url, allow_private=True)
        assert exc.value.code == "invalid_callback_url", url
    check_callback_url("https://93.184.215.14/hook", allow_private=False)  # a public address


def test_the_api_refuses_an_internal_callback(settings: Settings, broker_url: str) -> None:
    """POST /v1/jobs with a loopback callback answers 422 callback_not_allowed (the default:
    private addresses not allowed), and stores nothing."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(settings.model_copy(update={"webhook_allow_private": False}))
    with TestClient(app) as client:
        r = client.post(
            "/v1/jobs",
            files=[("files", ("p.png", page_png(), "image/png"))],
            data={"callback_url": "http://127.0.0.1:1/hook"},
        )
    assert r.status_code == 422 and r.json()["error"]["code"] == "callback_not_allowed"


@pytest.mark.slow  # seconds: waits on timeouts or reads many pages
def test_delivery_retries_with_backoff_until_accepted(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """An event refused twice is sent again after the backoff, then delivered, with the same
    event id and a valid signature each time; a delivered event is not sent again."""
    with Receiver(refuse_first=2) as receiver:
        job = _submit(sessions, settings.model_copy(update={"max_attempts": 1}), 1, receiver.url)
        with sessions.begin() as s:
            (c,) = claim_pages(s, [job.pages[0].id], lease_seconds=60)
            write_failure(s, c, code="invalid_image", message="x")
        secret = webhook_secret(sessions, "default")
        with httpx.Client(timeout=5) as client:
            kw = {"backoff": 0.3, "backoff_max": 1.0, "max_attempts": 5, "allow_private": True}
            assert deliver_due(sessions, client, **kw) == 0  # refused
            assert deliver_due(sessions, client, **kw) == 0  # not due yet: nothing sent
            assert len(receiver.requests) == 1
            deadline = time.monotonic() + 10
            while not receiver.accepted() and time.monotonic() < deadline:
                deliver_due(sessions, client, **kw)
                time.sleep(0.1)
            deliver_due(sessions, client, **kw)
    assert [r.answered for r in receiver.requests] == [500, 500, 204]
    ids = {json.loads(r.body)["id"] for r in receiver.requests}
    assert len(ids) == 1
    for r in receiver.requests:
        assert verify(secret, r.body, r.headers["Htrq-Signature"])
        assert not verify("another secret", r.body, r.headers["Htrq-Signature"])
    (event,) = _events(sessions, job.id)
    assert (event.status, event.attempts, event.last_status) == ("delivered", 3, 204)


@pytest.mark.slow
def test_a_finished_job_is_announced_once_to_a_receiver_that_refuses_at_first(
    processes: Processes, settings: Settings, engine: Engine
) -> None:
    """Real API and worker: the job's completion is POSTed, refused three times, delivered
    on the fourth attempt, exactly once, signed with the tenant's secret; the job resource
    shows the delivery."""
    settings = settings.model_copy(update={"webhook_backoff": 0.2, "webhook_backoff_max": 1.0})
    env = service_env(settings)
    processes.worker("hooks", env)
    url = processes.api(env)
    with Receiver(refuse_first=3) as receiver:
        files = [
            ("files", ("a.png", page_png("first"), "image/png")),
            ("files", ("b.png", corrupt_png(), "image/png")),
        ]
        r = httpx.post(
            f"{url}/v1/jobs",
            files=files,
            data={"callback_url": receiver.url, "external_id": "hooked"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        poll_job(url, job_id)
        wait_for(lambda: bool(receiver.accepted()), "the webhook to be accepted")
        time.sleep(2)  # time for any (wrong) second delivery to arrive
    (accepted,) = receiver.accepted()
    assert len(receiver.requests) == 4
    body = json.loads(accepted.body)
    assert body["job_id"] == job_id and body["external_id"] == "hooked"
    assert body["status"] == "partial" and body["counts"] == {
        "queued": 0, "running": 0, "succeeded": 1, "failed": 1
    }  # fmt: skip
    assert verify(webhook_secret(make_sessions(engine), "default"), accepted.body,
                  accepted.headers["Htrq-Signature"])  # fmt: skip
    hook = httpx.get(f"{url}/v1/jobs/{job_id}").json()["webhook"]
    assert (hook["status"], hook["attempts"], hook["event_id"]) == ("delivered", 4, body["id"])
    assert httpx.delete(f"{url}/v1/jobs/{job_id}").status_code == 204
