"""Completion webhooks: one event per completion, signed, delivered after refusals, and
callback URLs that may not reach internal addresses."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.db import make_sessions
from htrq.delivery.addresses import CallbackPolicy, check_callback_url
from htrq.delivery.sending import MAX_NETWORK_BYTES, post
from htrq.delivery.webhooks import deliver_due, verify
from htrq.errors import PageError
from htrq.jobs.claims import claim_pages, release_for_retry, write_failure, write_result
from htrq.models import Job, WebhookEvent
from htrq.settings import Settings
from htrq.storage import DirectoryStore
from htrq.tenants import PLAIN, default_tenant, webhook_secret
from tests.images import corrupt_png, page_png
from tests.receiver import DripReceiver, FloodReceiver, HoldingReceiver, Receiver
from tests.services import Processes, poll_job, service_env, wait_for
from worker.serving.sweeper import WebhookThread

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
    """Loopback, private and link-local hosts are refused unless allowed (the metadata
    address even then); other schemes, bad ports and hosts that do not resolve are refused
    always."""
    closed, private = CallbackPolicy(), CallbackPolicy.of((), allow_private=True)
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://[::1]/hook",
    ):
        with pytest.raises(PageError) as exc:
            check_callback_url(url, closed)
        assert exc.value.code == "callback_not_allowed", url
        check_callback_url(url, private)
    with pytest.raises(PageError) as exc:
        check_callback_url("http://169.254.169.254/latest/meta-data", private)
    assert exc.value.code == "callback_not_allowed"
    for url in (
        "ftp://example.org/x",
        "http:///nohost",
        "file:///etc/passwd",
        "http://example.com:99999/",
        "http://[::1/",
        "http://no-such-host.invalid/",
    ):
        with pytest.raises(PageError) as exc:
            check_callback_url(url, private)
        assert exc.value.code == "invalid_callback_url", url
    target = check_callback_url("https://93.184.215.14/hook", closed)  # a public address
    assert (target.host, target.port, [str(a) for a in target.addresses]) == (
        "93.184.215.14", 443, ["93.184.215.14"]
    )  # fmt: skip


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
        quick = settings.model_copy(
            update={"webhook_backoff": 0.3, "webhook_backoff_max": 1.0, "webhook_max_attempts": 5}
        )
        assert deliver_due(sessions, quick, box=PLAIN) == 0  # refused
        assert deliver_due(sessions, quick, box=PLAIN) == 0  # not due yet: nothing sent
        assert len(receiver.requests) == 1
        deadline = time.monotonic() + 10
        while not receiver.accepted() and time.monotonic() < deadline:
            deliver_due(sessions, quick, box=PLAIN)
            time.sleep(0.1)
        deliver_due(sessions, quick, box=PLAIN)
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


# -- receivers that misbehave ------------------------------------------------------------------


def _tenant_job(engine: Engine, settings: Settings, tenant: str, callback: str, n: int = 1):
    """A committed job of ``tenant`` (made), finished at once (its pages failed), so that its
    completion event is due; returns the committed sessions and the job's id."""
    from htrq.tenants import ensure_tenant

    sessions = make_sessions(engine)
    with sessions.begin() as s:
        tenant_id = ensure_tenant(s, tenant).id
    job, _ = jobs.submit(
        sessions=sessions,
        storage=DirectoryStore(settings.storage_dir),
        send=lambda ids, countdown=0, queue=None: None,
        settings=settings,
        tenant_id=tenant_id,
        uploads=[jobs.Upload(f"{i}.png", page_png(f"page {i}")) for i in range(n)],
        callback_url=callback,
    )
    with sessions.begin() as s:
        for c in claim_pages(s, [p.id for p in job.pages], lease_seconds=60):
            write_failure(s, c, code="invalid_image", message="x")
    return sessions, job.id


def _drop_tenants(engine: Engine, *names: str) -> None:
    from htrq.models import Tenant

    with make_sessions(engine).begin() as s:
        for t in s.scalars(select(Tenant).where(Tenant.name.in_(names))):
            s.delete(t)  # its jobs and their events go with it


def _quiet_others(engine: Engine) -> None:
    """Events other tests left pending in the run's database wait an hour, so that the
    dispatcher under test sends only this test's."""
    from datetime import timedelta

    from sqlalchemy import update

    from htrq.models import utcnow

    with make_sessions(engine).begin() as s:
        s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.status == "pending")
            .values(next_attempt_at=utcnow() + timedelta(hours=1))
        )


def test_a_receiver_answering_a_byte_at_a_time_is_cut_off_at_the_deadline(
    settings: Settings, engine: Engine
) -> None:
    """A receiver that drips its answer a byte every 0.1 s (each read well within any
    per-read timeout) is cut off at the delivery's deadline: the attempt fails as `timeout`,
    and the receiver got out only part of its 200-byte header, not all of it."""
    name = f"drip-{uuid.uuid4().hex[:8]}"
    _quiet_others(engine)
    try:
        with DripReceiver(interval=0.1, size=200) as receiver:
            sessions, job_id = _tenant_job(engine, settings, name, receiver.url)
            quick = settings.model_copy(update={"webhook_timeout": 1.0})
            assert deliver_due(sessions, quick, box=PLAIN) == 0
            assert receiver.done.wait(30)
        (event,) = _events(sessions, job_id)
        assert (event.status, event.attempts, event.last_error) == ("pending", 1, "timeout")
        (sent,) = receiver.sent
        assert sent < 200, sent  # the whole answer is over 230 bytes
    finally:
        _drop_tenants(engine, name)


def test_a_huge_answer_is_not_read(settings: Settings, engine: Engine) -> None:
    """A receiver answering 200 with a 300 MB body: the event is delivered, the worker reads
    no more than a few hundred KB of it (MAX_NETWORK_BYTES), and the receiver could push
    only what the sockets' buffers hold before the connection closed."""
    name = f"flood-{uuid.uuid4().hex[:8]}"
    _quiet_others(engine)
    try:
        with FloodReceiver() as receiver:
            sessions, job_id = _tenant_job(engine, settings, name, receiver.url)
            assert deliver_due(sessions, settings, box=PLAIN) == 1
            assert receiver.done.wait(30)
            target = check_callback_url(receiver.url, CallbackPolicy.from_settings(settings))
            attempt = post(receiver.url, target, b"{}", {}, seconds=10)
            assert receiver.done.wait(30)
        (event,) = _events(sessions, job_id)
        assert (event.status, event.last_status) == ("delivered", 200)
        assert attempt.status == 200 and attempt.bytes_read <= MAX_NETWORK_BYTES
        assert all(sent < 64 * 1024 * 1024 for sent in receiver.sent), receiver.sent
    finally:
        _drop_tenants(engine, name)


def test_a_slow_receiver_does_not_hold_another_tenants_events(
    settings: Settings, engine: Engine
) -> None:
    """The worker's webhook thread with three slots: tenant A's receiver holds every
    connection, and A has three events due before B's one; A gets at most two slots at once,
    and B's event is delivered while A's are still held."""
    a, b = f"slow-{uuid.uuid4().hex[:8]}", f"quick-{uuid.uuid4().hex[:8]}"
    _quiet_others(engine)
    s = settings.model_copy(
        update={
            "webhook_timeout": 60.0,
            "webhook_concurrency": 3,
            "webhook_tenant_concurrency": 2,
            "webhook_poll": 0.1,
        }
    )
    thread = None
    try:
        with HoldingReceiver() as slow, Receiver() as quick:
            sessions, _ = _tenant_job(engine, s, a, slow.url)
            _tenant_job(engine, s, a, slow.url)
            _tenant_job(engine, s, a, slow.url)
            _, job_b = _tenant_job(engine, s, b, quick.url)
            thread = WebhookThread(sessions=sessions, settings=s)
            thread.start()
            wait_for(lambda: bool(quick.accepted()), "B's event while A's are held", timeout=30)
            # B's connection may come before A's second one: the slots are taken at once.
            wait_for(lambda: slow.holding == 2, "A's two slots in use", timeout=30)
            wait_for(lambda: _events(sessions, job_b)[0].status == "delivered", "B's record")
            with slow.lock:
                most = slow.most
            assert most == 2  # A's third event waited for one of A's slots
            slow.release.set()
    finally:
        if thread is not None:
            thread.stop()
            thread.join(timeout=30)
        _drop_tenants(engine, a, b)


# -- DNS rebinding -----------------------------------------------------------------------------


class RebindingDns:
    """The resolver, for ``rebind.test`` only: ``first`` at the first lookup (after each
    :meth:`restart`), ``then`` at every later one, as a DNS server rebinding the name between
    a check and a connection would; ``answers`` lists what it answered."""

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then = first, then
        self.answers: list[str] = []

    def restart(self, first: str, then: str) -> None:
        self.first, self.then, self.answers = first, then, []

    def lookup(self, port: object) -> list[tuple]:
        address = self.then if self.answers else self.first
        self.answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 80)))]  # type: ignore[call-overload]


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> RebindingDns:
    """``socket.getaddrinfo`` answering ``rebind.test`` as a :class:`RebindingDns` does."""
    real = socket.getaddrinfo
    dns = RebindingDns("127.0.0.1", "127.0.0.2")

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        return dns.lookup(port) if host == "rebind.test" else real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return dns


def test_a_name_rebound_to_an_inner_host_after_the_check_is_not_reached(
    settings: Settings, engine: Engine, rebinding_dns: RebindingDns
) -> None:
    """Private addresses refused (the default): the callback's name answers a public address
    to the check and 127.0.0.1 to any later lookup. The delivery dials only the public
    address it checked (here unreachable), so the receiver on 127.0.0.1 gets nothing."""
    name = f"rebound-{uuid.uuid4().hex[:8]}"
    public = "93.184.215.14"
    settings = settings.model_copy(update={"webhook_allow_private": False, "webhook_timeout": 2.0})
    _quiet_others(engine)
    try:
        with Receiver() as receiver:
            port = receiver.server.server_address[1]
            rebinding_dns.restart(public, "127.0.0.1")
            sessions, job_id = _tenant_job(
                engine, settings, name, f"http://rebind.test:{port}/hooks/htrq"
            )
            rebinding_dns.restart(public, "127.0.0.1")
            assert deliver_due(sessions, settings, box=PLAIN) == 0
        assert receiver.requests == []
        assert rebinding_dns.answers == [public]  # one lookup: the one judged
        (event,) = _events(sessions, job_id)
        assert event.status == "pending" and event.last_error in ("unreachable", "timeout")
    finally:
        _drop_tenants(engine, name)


def test_a_delivery_connects_to_the_address_it_checked(
    settings: Settings, engine: Engine, rebinding_dns: RebindingDns
) -> None:
    """The callback's host resolves once, to the receiver, and to another address on any
    later lookup: the webhook still reaches the receiver (no second lookup), with the
    callback's own name in its Host header."""
    name = f"rebind-{uuid.uuid4().hex[:8]}"
    _quiet_others(engine)
    try:
        with Receiver() as receiver:
            port = receiver.server.server_address[1]
            url = f"http://rebind.test:{port}/hooks/htrq"
            sessions, job_id = _tenant_job(engine, settings, name, url)
            rebinding_dns.restart("127.0.0.1", "127.0.0.2")  # the submit's check resolved it
            assert deliver_due(sessions, settings, box=PLAIN) == 1
        assert rebinding_dns.answers == ["127.0.0.1"]  # one lookup, judged and dialled
        (got,) = receiver.accepted()
        assert got.headers["Host"] == f"rebind.test:{port}"
        (event,) = _events(sessions, job_id)
        assert event.status == "delivered"
    finally:
        _drop_tenants(engine, name)


def test_https_keeps_the_callbacks_name_for_tls(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTPS to a pinned address the TLS server name (SNI) and the certificate check are
    the callback host's: a certificate for rebind.test is accepted, and the receiver sees
    rebind.test as the server name."""
    import ssl

    from htrq.delivery.addresses import Target
    from tests.tls import self_signed

    cert, key = self_signed("rebind.test", tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts it as its CA
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    with Receiver() as receiver:
        receiver.server.socket = server_ctx.wrap_socket(receiver.server.socket, server_side=True)
        port = receiver.server.server_address[1]
        target = Target("https", "rebind.test", port, (ipaddress.ip_address("127.0.0.1"),))
        url = f"https://rebind.test:{port}/hooks/htrq"
        attempt = post(url, target, b"{}", {"Content-Type": "application/json"}, seconds=10)
        wrong = Target("https", "other.test", port, target.addresses)
        refused = post(f"https://other.test:{port}/", wrong, b"{}", {}, seconds=10)
    assert attempt.ok and attempt.status == 204, attempt
    assert names[0] == "rebind.test"
    assert receiver.accepted()[0].headers["Host"] == f"rebind.test:{port}"
    assert (refused.ok, refused.error) == (False, "tls_failed")  # the name must match


def test_the_job_shows_a_failed_delivery_as_a_code_not_the_receivers_words(
    settings: Settings, engine: Engine
) -> None:
    """A callback that refuses connections: the job resource's webhook state says
    `unreachable` with a fixed text, nothing of the error the connection raised (which would
    let a caller probe what listens where)."""
    name = f"probe-{uuid.uuid4().hex[:8]}"
    _quiet_others(engine)
    try:
        sessions, job_id = _tenant_job(engine, settings, name, "http://127.0.0.1:9/hook")
        assert deliver_due(sessions, settings, box=PLAIN) == 0
        with sessions() as s:
            tenant_id = s.scalars(select(Job.tenant_id).where(Job.id == job_id)).one()
        hook = jobs.get_job(sessions=sessions, tenant_id=tenant_id, job_id=job_id).webhook
        assert hook is not None
        assert (hook.last_error_code, hook.last_status) == ("unreachable", None)
        assert hook.last_error == "the receiver could not be reached"
    finally:
        _drop_tenants(engine, name)
