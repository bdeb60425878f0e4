"""Per-model queues and fair share between tenants: real ``htrq worker`` (and ``htrq api``)
processes on Redis and PostgreSQL."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from htrq import jobs
from htrq.db import make_sessions, session_scope
from htrq.jobs.deletion import delete_job
from htrq.models import Job, Page
from htrq.queue import CelerySender, make_celery, tenant_queue
from htrq.resources import JobResource
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import ensure_tenant
from tests.images import page_png
from tests.services import DEADLINE, Processes, poll_job, service_env, wait_for

pytestmark = pytest.mark.slow


def _batched(log: Path) -> int:
    """Pages the worker claimed, from its batch log lines (a page whose message waited in the
    worker's prefetch window past the sweeper's grace period arrives twice, and its second
    message claims nothing)."""
    return sum(int(n) for n in re.findall(rb"claimed (\d+)", log.read_bytes()))


def test_each_model_s_jobs_reach_the_workers_of_that_model(
    processes: Processes, settings: Settings, engine: Engine, tiny_model: Path, tmp_path: Path
) -> None:
    """Two workers, two models: a job naming the second model is read by its worker alone,
    a job naming none by the default model's; an unknown model is 422 unknown_model."""
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    _, first_log = processes.worker("first", service_env(settings))
    _, second_log = processes.worker(
        "second", service_env(settings.model_copy(update={"model": str(other)}))
    )
    url = processes.api(service_env(settings.model_copy(update={"models": f" {other} "})))

    def post(n: int, **data: str) -> httpx.Response:
        files = [("files", (f"p{i}.png", page_png(f"line {i}"), "image/png")) for i in range(n)]
        return httpx.post(f"{url}/v1/jobs", files=files, data={"mode": "line", **data}, timeout=30)

    unknown = post(1, model="no-such-model")
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["error"]["code"] == "unknown_model"
    assert str(other) in unknown.json()["error"]["message"]  # it says what may be asked for

    plain, asked = post(3), post(2, model=str(other))
    assert (plain.status_code, asked.status_code) == (201, 201), (plain.text, asked.text)
    assert (plain.json()["model"], asked.json()["model"]) == (str(tiny_model), str(other))
    for job in (plain.json(), asked.json()):
        # Each worker's pool process loads its model first: minutes on a loaded machine.
        assert poll_job(url, job["id"], timeout=4 * DEADLINE)["status"] == "succeeded"

    with engine.connect() as conn:
        read_by = dict(
            conn.execute(
                select(Page.job_id, func.array_agg(func.distinct(Page.model)))
                .where(Page.job_id.in_([plain.json()["id"], asked.json()["id"]]))
                .group_by(Page.job_id)
            ).all()
        )
    assert {str(k): v for k, v in read_by.items()} == {
        plain.json()["id"]: [str(tiny_model)],
        asked.json()["id"]: [str(other)],
    }
    assert (_batched(first_log), _batched(second_log)) == (3, 2)
    # The unknown model's request stored nothing.
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(Job.model == "no-such-model")) == 0


@pytest.mark.parametrize("fair_share", [True, False], ids=["fair-share", "first-come"])
def test_one_tenant_s_backlog_does_not_hold_back_another_tenant_s_page(
    fair_share: bool, processes: Processes, settings: Settings, engine: Engine
) -> None:
    """Tenant A's 200 one-line pages are queued and being read when tenant B, made after the
    worker started, sends one page: with fair share only a few groups of A's pages finish
    between B's page's submission and its result;
    first come first served (``HTRQ_FAIR_SHARE=false``, or fair share taken out) holds it
    behind every one of them."""
    s = settings.model_copy(update={"fair_share": fair_share, "queue_refresh": 0.3})
    sessions = make_sessions(engine)
    storage, sender = open_store(s), CelerySender(make_celery(s))

    def tenant(name: str) -> uuid.UUID:
        with session_scope(sessions) as session:
            return ensure_tenant(session, f"{name}-{uuid.uuid4().hex[:8]}").id

    def submit(tenant_id: uuid.UUID, n: int) -> JobResource:
        ups = [jobs.Upload(f"{i}.png", page_png(f"{tenant_id.hex[:4]} {i}")) for i in range(n)]
        job, _ = jobs.submit(
            sessions=sessions, storage=storage, send=sender, settings=s, tenant_id=tenant_id,
            uploads=ups, mode="line",
        )  # fmt: skip
        return job

    def finished(job_id: uuid.UUID) -> int:
        with engine.connect() as conn:
            q = select(func.count()).where(Page.job_id == job_id, Page.finished_at.is_not(None))
            return int(conn.scalar(q) or 0)

    a = tenant("a")
    worker, log = processes.worker("w", service_env(s))
    backlog = submit(a, 200)
    # The pool process loads the model first: on a loaded 2-core machine that takes minutes.
    wait_for(lambda: finished(backlog.id) > 0, "A's first page", worker, log, 0.05, 4 * DEADLINE)
    b = tenant("b")
    if fair_share:  # the worker finds the new tenant and consumes its queue
        queue = tenant_queue(s.model, b).encode()
        wait_for(lambda: b"consuming from " + queue in log.read_bytes(), "B's queue", worker, log)
    single = submit(b, 1)
    try:
        wait_for(lambda: finished(single.id) == 1, "B's page", worker, log, 0.05, 4 * DEADLINE)
        with engine.connect() as conn:
            b_page = conn.execute(
                select(Page.created_at, Page.finished_at, Page.attempts, Page.status).where(
                    Page.job_id == single.id
                )
            ).one()
            a_done = Page.job_id == backlog.id
            a_before = conn.scalar(
                select(func.count()).where(a_done, Page.finished_at <= b_page.finished_at)
            )
            # A's pages read while B's page waited: those finished before it was even
            # submitted are no sign of unfairness (the tiny model reads dozens a second while
            # the worker picks up B's queue and the test renders B's page).
            a_overtaking = conn.scalar(
                select(func.count()).where(
                    a_done,
                    Page.finished_at > b_page.created_at,
                    Page.finished_at <= b_page.finished_at,
                )
            )
        if fair_share:
            # A few groups of 4 (the worker's prefetch window and B's own group), not the rest
            # of A's backlog, some of which was still queued when B's page was done.
            # (B's attempts say whether it was re-sent, e.g. judged too slow.)
            seen = (a_before, a_overtaking, tuple(b_page))
            assert a_before is not None and a_before < 200, seen
            assert a_overtaking is not None and a_overtaking <= 24, seen
        else:
            # B's page is read in the last group, beside up to flush_every - 1 of A's pages
            # whose finish stamps may fall on either side of it; every earlier group went first.
            assert a_before is not None and a_before >= 200 - (s.flush_every - 1), a_before
    finally:
        processes.kill(worker)
        delete_job(sessions=sessions, storage=storage, tenant_id=a, job_id=backlog.id)
        delete_job(sessions=sessions, storage=storage, tenant_id=b, job_id=single.id)
