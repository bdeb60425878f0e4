"""Routing on PostgreSQL and Redis: a job's model and tenant decide its queue, for submit,
retry and the sweeper's re-sends."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.db import session_scope
from htrq.errors import PageError
from htrq.models import Job, Page, utcnow
from htrq.queue import CelerySender, make_celery, page_queue
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import ensure_tenant
from tests.images import page_png
from worker.serving.sweeper import sweep_once


class Recorder:
    """A send function that remembers each page's queue."""

    def __init__(self) -> None:
        self.queues: dict[str, str | None] = {}

    def __call__(
        self, page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None
    ) -> None:
        self.queues.update(dict.fromkeys(page_ids, queue))


def _tenant(sessions: sessionmaker[Session], name: str) -> uuid.UUID:
    with session_scope(sessions) as s:
        return ensure_tenant(s, f"{name}-{uuid.uuid4().hex[:8]}").id


def test_a_job_keeps_the_model_it_asked_for_and_submit_and_retry_send_to_its_queue(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The job records its model; its pages, first and retried, go to its tenant's queue of
    that model; an unknown model stores nothing; naming the default is the same job as
    naming none, another model under the same key is a conflict."""
    s = settings.model_copy(update={"models": "/models/other"})
    tenant, send = _tenant(sessions, "t"), Recorder()

    def submit(**kw: object) -> jobs.JobResource:
        job, _ = jobs.submit(
            sessions=sessions, storage=open_store(s), send=send, settings=s, tenant_id=tenant,
            uploads=[jobs.Upload("p.png", page_png("routed"))], **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        return job

    with pytest.raises(PageError) as refused:
        submit(model="/models/unknown", idempotency_key="k0")
    assert refused.value.code == "unknown_model" and "/models/other" in refused.value.message
    with sessions() as session:
        assert session.scalar(select(Job).where(Job.idempotency_key == "k0")) is None

    other, plain = submit(model="/models/other"), submit(idempotency_key="k1")
    assert (other.model, plain.model) == ("/models/other", s.model)
    assert send.queues == {
        str(other.pages[0].id): page_queue(s, model="/models/other", tenant_id=tenant),
        str(plain.pages[0].id): page_queue(s, model=None, tenant_id=tenant),
    }
    assert submit(idempotency_key="k1", model=s.model).id == plain.id
    with pytest.raises(jobs.IdempotencyConflict):
        submit(idempotency_key="k1", model="/models/other")

    with sessions() as session:
        session.execute(
            update(Page).where(Page.job_id == other.id).values(status="failed", attempts=1)
        )
        session.commit()
    send.queues.clear()
    assert jobs.retry(sessions=sessions, send=send, settings=s, tenant_id=tenant, job_id=other.id)
    assert send.queues == {
        str(other.pages[0].id): page_queue(s, model="/models/other", tenant_id=tenant)
    }


@pytest.mark.usefixtures("broker_url")
def test_the_sweeper_re_sends_a_lost_page_to_its_queue_whatever_waits_in_another_s(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A's queue holds messages (a backlog), B's is empty: B's long-queued page is taken for
    lost and re-sent to B's queue; A's is not, since its message may be waiting."""
    a, b = _tenant(sessions, "a"), _tenant(sessions, "b")
    pages = {}
    for tenant in (a, b):
        job, _ = jobs.submit(
            sessions=sessions, storage=open_store(settings), send=lambda *_, **__: None,
            settings=settings, tenant_id=tenant, uploads=[jobs.Upload("p.png", page_png())],
        )  # fmt: skip
        pages[tenant] = job.pages[0].id
    with sessions() as session:
        session.execute(
            update(Page)
            .where(Page.id.in_(pages.values()))
            .values(queued_at=utcnow() - timedelta(hours=1))
        )
        session.commit()
    sender = CelerySender(make_celery(settings))
    queue_a = page_queue(settings, model=None, tenant_id=a)
    queue_b = page_queue(settings, model=None, tenant_id=b)
    sender(["a-backlog"], queue=queue_a)

    stale = settings.model_copy(update={"queued_grace_seconds": 60})
    swept = sweep_once(sessions=sessions, sender=sender, settings=stale)
    assert pages[b] in swept.resend and pages[a] not in swept.resend
    client = redis.Redis.from_url(settings.broker_url or "")
    assert (client.llen(queue_a), client.llen(queue_b)) == (1, 1)


def test_a_job_keeps_its_language_and_an_unknown_one_is_refused(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A job records the language it names (the default when it names none); a language
    without a lexicon stores nothing; naming the default is the same job as naming none,
    another language under the same key is a conflict."""
    s = settings.model_copy(update={"language": "en", "languages": "en,fr"})
    tenant, send = _tenant(sessions, "lang"), Recorder()

    def submit(**kw: object) -> jobs.JobResource:
        job, _ = jobs.submit(
            sessions=sessions, storage=open_store(s), send=send, settings=s, tenant_id=tenant,
            uploads=[jobs.Upload("p.png", page_png("spoken"))], **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        return job

    with pytest.raises(PageError) as refused:
        submit(language="xx", idempotency_key="l0")
    assert refused.value.code == "unknown_language" and "en, fr" in refused.value.message
    with sessions() as session:
        assert session.scalar(select(Job).where(Job.idempotency_key == "l0")) is None
    fr, plain, none = submit(language="fr"), submit(idempotency_key="l1"), submit(language="none")
    assert (fr.language, plain.language, none.language) == ("fr", "en", "none")
    assert submit(language="en", idempotency_key="l1").id == plain.id
    with pytest.raises(jobs.IdempotencyConflict):
        submit(language="fr", idempotency_key="l1")
