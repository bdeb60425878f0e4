"""Reuse: a page the tenant already had read is not read again (``htrq.jobs.reuse``).

The worker's batch code (``process_batch``) on the run's PostgreSQL with the tiny model, as in
``test_batch.py``; the pipeline is counted, so that "not read again" is a count of readings.
The end-to-end tests at the bottom run a real ``htrq worker`` (and ``htrq api``) on Redis.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from collections.abc import Callable, Hashable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from htrq import jobs
from htrq.db import make_sessions, session_scope
from htrq.jobs.claims import ReadBy, claim_pages, sweep, write_failure, write_result
from htrq.jobs.corrections import correct_line
from htrq.jobs.deletion import delete_job
from htrq.jobs.reuse import Candidate, reading_key, settle
from htrq.models import Job, Page, WebhookEvent, utcnow
from htrq.queue import CelerySender, make_celery, page_queue
from htrq.resources import JobResource, PageResource
from htrq.settings import Settings
from htrq.storage import DirectoryStore
from htrq.tenants import default_tenant, ensure_tenant
from tests.finished import Read
from tests.images import page_png
from tests.services import DEADLINE, Processes, poll_job, service_env, wait_for
from worker.recognition.pipeline import PageInput, PageOutput, Pipeline
from worker.recognition.reading import LineReader, Recognize
from worker.recognition.recognizer import Recognizer
from worker.serving.batch import BatchContext, process_batch
from worker.serving.embedded import LocalQueue

#: What the in-process worker says read its pages (a real worker digests its weights).
READ_BY = ReadBy(
    model_sha256="a" * 64,
    decoding={"num_beams": 1, "ctc_weight": 0.0, "segmenter": "classical", "batch_size": 8},
    htrq_version="test",
)


class Counting:
    """The real pipeline, keeping the key of every page it reads; ``during`` (once) runs
    while it reads, when the group's pages are ``running``."""

    def __init__(self, inner: Pipeline) -> None:
        self.inner = inner
        self.read: list[Hashable] = []
        self.during: Callable[[], None] | None = None

    def __call__(self, inputs: Sequence[PageInput]) -> dict[Hashable, PageOutput | Any]:
        self.read += [i.key for i in inputs]
        if self.during is not None:
            during, self.during = self.during, None
            during()
        return self.inner(inputs)


def _context(
    sessions: sessionmaker[Session],
    settings: Settings,
    recognize: Recognize,
    read_by: ReadBy | None = READ_BY,
    model_name: str = "tiny",
) -> BatchContext:
    return BatchContext(
        settings=settings,
        sessions=sessions,
        storage=DirectoryStore(settings.storage_dir),
        pipeline=Counting(Pipeline(read=LineReader(_plain(recognize), max_aspect=12.0))),  # type: ignore[arg-type]
        model_name=model_name,
        send=LocalQueue(),
        read_by=read_by,
    )


def _plain(recognize: Recognize) -> Recognize:
    """``recognize`` without a lexicon, whatever language a page is read in (what is read
    does not matter here, only whether it is)."""
    return lambda crops, *_: recognize(crops)


def _read(ctx: BatchContext) -> list[Hashable]:
    assert isinstance(ctx.pipeline, Counting)
    return ctx.pipeline.read


def _submit(
    ctx: BatchContext,
    files: Sequence[bytes],
    *,
    tenant_id: uuid.UUID | None = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> JobResource:
    job, _ = jobs.submit(
        sessions=ctx.sessions,
        tenant_id=tenant_id or default_tenant(ctx.sessions),
        storage=ctx.storage,
        send=ctx.send,
        settings=settings or ctx.settings,
        uploads=[jobs.Upload(f"{i}.png", d) for i, d in enumerate(files)],
        **kwargs,
    )
    return job


def _ids(job: JobResource) -> list[str]:
    return [str(p.id) for p in job.pages]


def _page(ctx: BatchContext, job: JobResource, index: int = 0) -> PageResource:
    with ctx.sessions() as s:  # a deleted job: the default tenant's, whose page is not found
        tenant = s.scalars(select(Job.tenant_id).where(Job.id == job.id)).first()
    tenant = tenant or default_tenant(ctx.sessions)
    return jobs.get_page(sessions=ctx.sessions, tenant_id=tenant, job_id=job.id, index=index)


def _reading(page: PageResource) -> tuple[object, ...]:
    """What a copy must have of its original: the machine's reading, lines (with their words)
    and provenance."""
    lines = [
        (ln.model_text, ln.confidence, ln.bbox, ln.polygon, ln.baseline, ln.words, ln.box_source)
        for ln in page.lines
    ]
    return (page.text, page.confidence, page.width, page.height, page.provenance, lines)


def _reused_from(page: PageResource) -> tuple[uuid.UUID, int] | None:
    return (page.reused_from.job_id, page.reused_from.page) if page.reused_from else None


def test_an_identical_page_takes_the_earlier_reading_and_completes_its_job(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """The same bytes in a new job of the same tenant are not read: the page is succeeded at
    its claim with the first page's reading in its own rows, says ``reused_from``, and its
    job completes with a webhook event as a read page's would."""
    ctx = _context(sessions, settings, recognizer)
    first = _submit(ctx, [page_png("Dear Sir")])
    assert process_batch(_ids(first), ctx).read == 1
    again = _submit(ctx, [page_png("Dear Sir")], callback_url="http://127.0.0.1:9/hook")
    report = process_batch(_ids(again), ctx)
    assert (report.claimed, report.read, report.reused, report.succeeded) == (1, 0, 1, 1)
    assert len(_read(ctx)) == 1  # one reading for two pages
    original, copy = _page(ctx, first), _page(ctx, again)
    assert copy.status == "succeeded" and copy.lines
    assert _reading(copy) == _reading(original)
    assert _reused_from(copy) == (first.id, 0) and original.reused_from is None
    with sessions() as s:
        event = s.scalars(select(WebhookEvent).where(WebhookEvent.job_id == again.id)).one()
    job = jobs.get_job(sessions=sessions, tenant_id=default_tenant(sessions), job_id=again.id)
    assert (job.status, job.finished_at is not None) == ("succeeded", True)
    assert '"status":"succeeded"' in event.payload and len(report.latencies) == 1


def test_the_same_bytes_under_another_tenant_are_read_again(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """Readings are never shared between tenants, whatever they upload."""
    ctx = _context(sessions, settings, recognizer)
    with session_scope(sessions) as s:
        other = ensure_tenant(s, f"other-{uuid.uuid4().hex[:8]}").id
    mine = _submit(ctx, [page_png("Dear Sir")])
    theirs = _submit(ctx, [page_png("Dear Sir")], tenant_id=other)
    assert process_batch(_ids(mine), ctx).read == 1
    assert process_batch(_ids(theirs), ctx).read == 1
    assert _read(ctx) == [mine.pages[0].id, theirs.pages[0].id]
    assert _page(ctx, theirs).reused_from is None


@pytest.mark.parametrize(
    ("change", "reused"),
    [
        ({"model_sha256": "b" * 64}, False),  # other weights under the same model name
        ({"model_name": "other-model"}, False),
        ({"num_beams": 4}, False),
        ({"segmenter": "projection"}, False),
        ({"mode": "line"}, False),
        ({"language": "fr"}, False),  # the job's lexicon steers the reading
        ({"language": "fr", "word_weight": 0.0}, True),  # no lexicon in force: the same
        ({"batch_size": 32}, True),  # recorded, but no part of what is read
    ],
    ids=[
        "weights", "model-name", "beams", "segmenter", "mode", "language",
        "language-unweighted", "batch-size",
    ],
)  # fmt: skip
def test_another_model_or_reading_setting_reads_again(
    change: dict[str, Any],
    reused: bool,
    sessions: sessionmaker[Session],
    settings: Settings,
    recognizer: Recognizer,
) -> None:
    """A worker whose weights, model name or reading settings differ from the first reading's
    (or a job in another mode or language) reads the page again; the batch size alone does
    not, nor a language where no lexicon weighs on the reading."""
    settings = settings.model_copy(update={"word_weight": change.get("word_weight", 0.3)})
    first = _context(sessions, settings, recognizer)
    process_batch(_ids(_submit(first, [page_png("Dear Sir")])), first)
    decoding = {k: change.get(k, v) for k, v in READ_BY.decoding.items()}
    read_by = ReadBy(change.get("model_sha256", READ_BY.model_sha256), decoding, "test")
    second = _context(
        sessions, settings, recognizer, read_by, change.get("model_name", first.model_name)
    )
    job = _submit(
        second, [page_png("Dear Sir")], mode=change.get("mode", "page"),
        language=change.get("language"),
    )  # fmt: skip
    report = process_batch(_ids(job), second)
    assert (report.read, report.reused) == ((0, 1) if reused else (1, 0))
    assert (_page(second, job).reused_from is not None) is reused


def test_a_worker_without_a_weights_digest_always_reads(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """Where the weights could not be digested nothing tells two models apart: every page is
    read, and none becomes a source."""
    ctx = _context(sessions, settings, recognizer, ReadBy(None, READ_BY.decoding, "test"))
    for _ in range(2):
        process_batch(_ids(_submit(ctx, [page_png("Dear Sir")])), ctx)
    assert len(_read(ctx)) == 2
    with sessions() as s:
        assert s.scalar(select(func.count()).where(Page.reading_key.is_not(None))) == 0


def test_reuse_false_reads_afresh_and_that_reading_serves_later_pages(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """A job submitted with ``reuse=False`` is read although its page was read before; a
    later job that allows reuse takes one of the two readings."""
    ctx = _context(sessions, settings, recognizer)
    first = _submit(ctx, [page_png("Dear Sir")])
    process_batch(_ids(first), ctx)
    fresh = _submit(ctx, [page_png("Dear Sir")], reuse=False)
    assert fresh.reuse is False
    assert process_batch(_ids(fresh), ctx).read == 1
    assert _page(ctx, fresh).reused_from is None
    later = _submit(ctx, [page_png("Dear Sir")])
    assert process_batch(_ids(later), ctx).reused == 1
    assert _reused_from(_page(ctx, later)) in {(first.id, 0), (fresh.id, 0)}
    assert len(_read(ctx)) == 2


def test_twins_in_one_group_are_read_once(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """Two identical files in one job, claimed in one group: one is read, the other waits
    for it and takes its reading when it is stored, in the same batch."""
    ctx = _context(sessions, settings, recognizer)
    job = _submit(ctx, [page_png("Dear Sir"), page_png("Yours"), page_png("Dear Sir")])
    report = process_batch(_ids(job), ctx)
    assert (report.read, report.waiting, report.reused, report.succeeded) == (2, 1, 1, 3)
    assert _reused_from(_page(ctx, job, 2)) == (job.id, 0)
    assert _reading(_page(ctx, job, 2)) == _reading(_page(ctx, job, 0))
    final = jobs.get_job(sessions=sessions, tenant_id=default_tenant(sessions), job_id=job.id)
    assert final.status == "succeeded"


def test_a_copy_that_arrives_while_the_original_is_read_waits_for_it(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """The copy's batch runs while the original's group is being read: the copy claims and
    waits (``running``, reading nothing), and is succeeded with the original's reading in
    the transaction that stores it. One reading in all."""
    ctx = _context(sessions, settings, recognizer)
    original = _submit(ctx, [page_png("Dear Sir")])
    copy = _submit(ctx, [page_png("Dear Sir")])
    seen: dict[str, object] = {}

    def copy_arrives() -> None:
        report = process_batch(_ids(copy), ctx)
        seen["report"] = (report.claimed, report.read, report.waiting, report.succeeded)
        seen["status"] = _page(ctx, copy).status

    assert isinstance(ctx.pipeline, Counting)
    ctx.pipeline.during = copy_arrives
    report = process_batch(_ids(original), ctx)
    assert seen == {"report": (1, 0, 1, 0), "status": "running"}
    assert (report.read, report.reused, report.succeeded) == (1, 1, 2)
    assert _read(ctx) == [original.pages[0].id]
    assert _page(ctx, copy).status == "succeeded"
    assert _reading(_page(ctx, copy)) == _reading(_page(ctx, original))
    assert _reused_from(_page(ctx, copy)) == (original.id, 0)


class Broken:
    """A recognizer that always fails."""

    def __call__(self, crops: Sequence[Any], *args: Any) -> Sequence[Any]:
        raise RuntimeError("CUDA error: device-side assert")


class FailsFirst:
    """A recognizer whose first call fails (a sick GPU), then reads as ``inner``."""

    def __init__(self, inner: Recognize) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, crops: Sequence[Any], *args: Any) -> Sequence[Any]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA error: device-side assert")
        return self.inner(crops, *args)


def test_when_the_original_fails_the_copy_is_read_itself(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """The original fails for good (its last attempt hits a model error) while the copy waits
    for it: the copy is not failed with it but sent back to the queue, its attempt given
    back, and read on its own."""
    ctx = _context(sessions, settings, FailsFirst(recognizer))
    queue = ctx.send
    assert isinstance(queue, LocalQueue)
    one_try = settings.model_copy(update={"max_attempts": 1})
    original = _submit(ctx, [page_png("Dear Sir")], settings=one_try)
    copy = _submit(ctx, [page_png("Dear Sir")])
    queue.take(10)
    report = process_batch(_ids(original) + _ids(copy), ctx)
    assert (report.read, report.waiting, report.failed) == (1, 1, 1)
    assert _page(ctx, original).error is not None
    assert _page(ctx, copy).status == "queued" and queue.take(10) == _ids(copy)
    assert process_batch(_ids(copy), ctx).read == 1
    page = _page(ctx, copy)
    assert (page.status, page.reused_from, page.error) == ("succeeded", None, None)
    assert page.attempts == 2  # the wait's claim and the reading's; its limit was raised
    assert _page(ctx, original).status == "failed"


def test_deleting_the_original_leaves_the_copy_whole(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """The copy holds its own rows and its file is kept while it uses it: after the
    original's job is deleted the copy reads as before, and its image is still stored."""
    ctx = _context(sessions, settings, recognizer)
    original = _submit(ctx, [page_png("Dear Sir")])
    process_batch(_ids(original), ctx)
    copy = _submit(ctx, [page_png("Dear Sir")])
    process_batch(_ids(copy), ctx)
    before = _page(ctx, copy)
    delete_job(
        sessions=sessions, storage=ctx.storage, tenant_id=default_tenant(sessions),
        job_id=original.id,
    )  # fmt: skip
    with pytest.raises(jobs.NotFound):
        _page(ctx, original)
    after = _page(ctx, copy)
    assert after == before and after.lines and _reused_from(after) == (original.id, 0)
    with sessions() as s:
        blob = s.scalars(select(Page.blob_key).where(Page.id == copy.pages[0].id)).one()
    assert ctx.storage.get(blob) == page_png("Dear Sir")


def test_deleting_an_original_being_read_sends_its_waiter_to_be_read(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """The original's job is deleted while the copy waits for it: the copy goes back to its
    queue (sent by the delete) and is read on its own."""
    ctx = _context(sessions, settings, recognizer)
    queue = ctx.send
    assert isinstance(queue, LocalQueue)
    original = _submit(ctx, [page_png("Dear Sir")])
    copy = _submit(ctx, [page_png("Dear Sir")])
    queue.take(10)

    def copy_arrives_then_original_deleted() -> None:
        assert process_batch(_ids(copy), ctx).waiting == 1
        delete_job(
            sessions=sessions, storage=ctx.storage, tenant_id=default_tenant(sessions),
            job_id=original.id, send=queue, settings=settings,
        )  # fmt: skip

    assert isinstance(ctx.pipeline, Counting)
    ctx.pipeline.during = copy_arrives_then_original_deleted
    report = process_batch(_ids(original), ctx)
    assert (report.succeeded, report.reused) == (0, 0)  # it finished into nothing
    assert queue.take(10) == _ids(copy)
    assert process_batch(_ids(copy), ctx).read == 1
    page = _page(ctx, copy)
    assert (page.status, page.reused_from) == ("succeeded", None)


def test_the_copy_takes_the_machine_reading_not_the_corrections(
    sessions: sessionmaker[Session], settings: Settings, recognizer: Recognizer
) -> None:
    """A person's correction of the original stays the original's: the copy shows the
    model's reading, not corrected nor reviewed, with the original's confidence."""
    ctx = _context(sessions, settings, recognizer)
    original = _submit(ctx, [page_png("Dear Sir")])
    process_batch(_ids(original), ctx)
    tenant = default_tenant(sessions)
    read_words = _page(ctx, original).lines[0].words
    correct_line(
        sessions=sessions, tenant_id=tenant, job_id=original.id, page_index=0, line_index=0,
        text="Dear Madam",
    )  # fmt: skip
    copy = _submit(ctx, [page_png("Dear Sir")])
    process_batch(_ids(copy), ctx)
    corrected, copied = _page(ctx, original).lines[0], _page(ctx, copy).lines[0]
    assert corrected.text == "Dear Madam" and corrected.corrected
    assert copied.text == copied.model_text == corrected.model_text
    assert not (copied.corrected or copied.reviewed)
    # The copy has the model's words, not those re-fitted to the original's correction.
    assert copied.words == read_words and copied.box_source == corrected.box_source
    assert [w.text for w in corrected.words] == ["Dear", "Madam"]


def test_a_reader_taken_back_by_the_sweeper_frees_its_waiters(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The reader's worker died: when the sweeper takes its page back, the page that waited
    for it is sent again too, with its attempt given back."""
    ctx = _context(sessions, settings, Broken())
    original, copy = (_submit(ctx, [page_png("Dear Sir")]) for _ in range(2))
    tenant, key = default_tenant(sessions), "f" * 64
    ids = [original.pages[0].id, copy.pages[0].id]
    with session_scope(sessions) as s:
        tokens = {c.page_id: c.token for c in claim_pages(s, ids, lease_seconds=1)}
        settled = settle(
            s, [Candidate(i, tokens[i], tenant, key, True) for i in ids], lease_seconds=1
        )
    assert (settled.read, settled.waiting) == ([ids[0]], [ids[1]])
    with session_scope(sessions) as s:
        s.execute(  # the waiter's own lease still holds; its reader's has run out
            update(Page).where(Page.id == ids[1]).values(lease_until=utcnow() + timedelta(hours=1))
        )
        swept = sweep(s, now=utcnow() + timedelta(seconds=5))
    assert ids[0] in swept.requeued and swept.freed == [ids[1]]
    with sessions() as s:
        waiter = s.get_one(Page, ids[1])
        assert (waiter.status, waiter.waiting_on, waiter.attempt_limit) == ("queued", None, 3)


def test_two_identical_pages_settled_at_once_make_one_reader(
    engine: Engine, settings: Settings
) -> None:
    """Two workers settle identical pages at the same moment, on two connections: the second
    waits for the first's lock on the key and then waits for its page, instead of reading
    it a second time."""
    sessions = make_sessions(engine)
    tenant, key = default_tenant(sessions), "c" * 64
    storage = DirectoryStore(settings.storage_dir)
    made = [
        jobs.submit(
            sessions=sessions, storage=storage, send=lambda ids, countdown=0, queue=None: None,
            settings=settings, tenant_id=tenant, uploads=[jobs.Upload("p.png", page_png())],
        )[0]
        for _ in range(2)
    ]  # fmt: skip
    try:
        with session_scope(sessions) as s:
            claims = claim_pages(s, [j.pages[0].id for j in made], lease_seconds=60)
        first, second = sorted(
            (Candidate(c.page_id, c.token, tenant, key, True) for c in claims),
            key=lambda c: c.page_id != made[0].pages[0].id,
        )
        outcome: dict[str, Any] = {}

        def other_worker() -> None:
            with session_scope(sessions) as s2:
                outcome["pid"] = s2.scalar(text("SELECT pg_backend_pid()"))
                outcome["settled"] = settle(s2, [second], lease_seconds=60)

        with session_scope(sessions) as s1:
            assert settle(s1, [first], lease_seconds=60).read == [first.page_id]
            thread = threading.Thread(target=other_worker)
            thread.start()

            def blocked_or_done() -> bool:
                if "settled" in outcome:
                    return True
                with engine.connect() as conn:
                    waits = conn.scalar(
                        text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                        {"p": outcome.get("pid", -1)},
                    )
                return waits == "Lock"

            wait_for(blocked_or_done, "the second settle to block or finish", interval=0.05)
            assert "settled" not in outcome  # it waits for the first's transaction
        thread.join(timeout=DEADLINE)
        settled = outcome["settled"]
        assert (settled.read, settled.waiting) == ([], [second.page_id])
    finally:
        for job in made:
            delete_job(sessions=sessions, storage=storage, tenant_id=tenant, job_id=job.id)


def test_a_reading_key_is_the_same_only_for_the_same_reading() -> None:
    """The key changes with the tenant, the file, the frame, the mode, the model and every
    recorded setting but the batch size; without a weights digest there is none."""
    base: dict[str, Any] = {
        "tenant_id": uuid.UUID(int=1),
        "blob_key": "f" * 64,
        "frame": 0,
        "mode": "page",
        "model": "builtin",
        "model_sha256": "a" * 64,
        "decoding": {"num_beams": 4, "batch_size": 16},
        "htrq_version": "1.0",
    }
    key = reading_key(**base)
    assert key is not None and len(key) == 64
    changes: list[dict[str, Any]] = [
        {"tenant_id": uuid.UUID(int=2)},
        {"blob_key": "e" * 64},
        {"frame": 1},
        {"mode": "line"},
        {"model": "other"},
        {"model_sha256": "b" * 64},
        {"decoding": {"num_beams": 1, "batch_size": 16}},
        {"decoding": {"num_beams": 4, "batch_size": 16, "segmenter": "kraken"}},
        {"htrq_version": "1.1"},
    ]
    for change in changes:
        assert reading_key(**{**base, **change}) != key, change
    assert reading_key(**{**base, "decoding": {"num_beams": 4, "batch_size": 64}}) == key
    assert reading_key(**{**base, "model_sha256": None}) is None


# -- a real worker ----------------------------------------------------------------------------


def _log_counts(log: Path, what: str) -> int:
    """Pages the worker's batch lines count as ``what`` (read, reused, waiting)."""
    return sum(int(n) for n in re.findall(rf"{what} (\d+)".encode(), log.read_bytes()))


@pytest.mark.slow
def test_a_worker_reads_a_page_once_for_every_job_that_sends_it(
    processes: Processes, settings: Settings, engine: Engine
) -> None:
    """Through the API and a real worker: a second job with the same pages is answered from
    the first reading (``reused_from``, the same lines, the job and its webhook state
    complete as for read pages); ``reuse=false`` and another tenant's job read again."""
    _, log = processes.worker("w", service_env(settings))
    url = processes.api(service_env(settings))
    pages = [page_png(f"line {i}") for i in range(3)]

    def post(**data: str) -> dict[str, Any]:
        files = [("files", (f"p{i}.png", p, "image/png")) for i, p in enumerate(pages)]
        r = httpx.post(f"{url}/v1/jobs", files=files, data={"mode": "line", **data}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()

    first = post()
    # The pool process loads the model first: minutes on a loaded machine.
    assert poll_job(url, first["id"], timeout=4 * DEADLINE)["status"] == "succeeded"
    again = post()
    assert poll_job(url, again["id"])["status"] == "succeeded"
    for i in range(3):
        original = httpx.get(f"{url}/v1/jobs/{first['id']}/pages/{i}").json()
        copy = httpx.get(f"{url}/v1/jobs/{again['id']}/pages/{i}").json()
        assert copy["reused_from"] == {"job_id": first["id"], "page": i}
        assert copy["lines"] == original["lines"] and copy["text"] == original["text"]
        assert copy["provenance"] == original["provenance"]
    fresh = post(reuse="false")
    assert fresh["reuse"] is False
    assert poll_job(url, fresh["id"])["status"] == "succeeded"
    assert httpx.get(f"{url}/v1/jobs/{fresh['id']}/pages/0").json()["reused_from"] is None
    # Another tenant's job, with the same files: its own readings.
    sessions = make_sessions(engine)
    with session_scope(sessions) as s:
        other = ensure_tenant(s, f"other-{uuid.uuid4().hex[:8]}").id
    theirs, _ = jobs.submit(
        sessions=sessions, storage=DirectoryStore(settings.storage_dir),
        send=CelerySender(make_celery(settings)), settings=settings, tenant_id=other,
        uploads=[jobs.Upload(f"p{i}.png", p) for i, p in enumerate(pages)], mode="line",
    )  # fmt: skip
    wait_for(
        lambda: (
            jobs.get_job(sessions=sessions, tenant_id=other, job_id=theirs.id).status == "succeeded"
        ),
        "the other tenant's job",
    )
    page = jobs.get_page(sessions=sessions, tenant_id=other, job_id=theirs.id, index=0)
    assert page.reused_from is None
    # Twelve pages, nine readings: the first job's, reuse=false's and the other tenant's.
    wait_for(lambda: _log_counts(log, "succeeded") == 12, "the batch lines")
    assert (_log_counts(log, "read"), _log_counts(log, "reused")) == (9, 3)


def _held_reader(
    sessions: sessionmaker[Session], settings: Settings, key_of: Callable[[Page, Job], str]
) -> tuple[JobResource, Any]:
    """A page submitted with its message dropped and claimed here, settled as its key's
    reader exactly as a worker would: a reading in progress that the test finishes."""
    tenant = default_tenant(sessions)
    job, _ = jobs.submit(
        sessions=sessions, storage=DirectoryStore(settings.storage_dir),
        send=lambda ids, countdown=0, queue=None: None, settings=settings, tenant_id=tenant,
        uploads=[jobs.Upload("held.png", page_png("held reading"))], mode="line",
    )  # fmt: skip
    with session_scope(sessions) as s:
        (claim,) = claim_pages(s, [job.pages[0].id], lease_seconds=settings.lease_seconds)
        page, row = s.get_one(Page, claim.page_id), s.get_one(Job, job.id)
        key = key_of(page, row)
        assert settle(s, [Candidate(claim.page_id, claim.token, tenant, key, True)],
                      lease_seconds=60).read == [claim.page_id]  # fmt: skip
    return job, dataclasses.replace(claim, reading_key=key)


@pytest.mark.slow
@pytest.mark.parametrize("original", ["succeeds", "fails"])
def test_a_copy_arriving_while_its_original_is_read_waits_then_succeeds(
    original: str, processes: Processes, settings: Settings, engine: Engine
) -> None:
    """A real worker claims a page whose twin is being read (a claim this test holds, as a
    worker would): the page waits, reading nothing. When the reading is stored, the page
    is succeeded with it, and its job's webhook event is written; when the original fails
    instead, the waiting page is sent back to the worker and read there, not failed."""
    # A long lease: the held claim must not be taken back by the sweeper on a slow machine.
    settings = settings.model_copy(update={"lease_seconds": 600})
    sessions = make_sessions(engine)
    _, log = processes.worker("w", service_env(settings))
    tenant = default_tenant(sessions)
    send = CelerySender(make_celery(settings))
    storage = DirectoryStore(settings.storage_dir)

    def submit(data: bytes, **kwargs: Any) -> JobResource:
        job, _ = jobs.submit(
            sessions=sessions, storage=storage, send=send, settings=settings, tenant_id=tenant,
            uploads=[jobs.Upload("p.png", data)], mode="line", **kwargs,
        )  # fmt: skip
        return job

    def status(job: JobResource) -> str:
        return jobs.get_page(sessions=sessions, tenant_id=tenant, job_id=job.id, index=0).status

    warm = submit(page_png("warm up"))  # the worker loads its model and records provenance
    wait_for(lambda: status(warm) == "succeeded", "the first page", timeout=4 * DEADLINE)
    with sessions() as s:
        read_by = s.get_one(Page, warm.pages[0].id)

    def worker_key(page: Page, job: Job) -> str:
        # The worker's key, from the provenance it stored with the first page it read.
        key = reading_key(
            tenant_id=job.tenant_id, blob_key=page.blob_key, frame=page.frame, mode=job.mode,
            model=read_by.model or "", model_sha256=read_by.model_sha256,
            decoding=json.loads(read_by.decoding or "{}"),
            htrq_version=read_by.htrq_version or "",
        )  # fmt: skip
        assert key is not None
        return key

    held, claim = _held_reader(sessions, settings, worker_key)
    copy = submit(page_png("held reading"), callback_url="http://127.0.0.1:9/hook")
    wait_for(lambda: _log_counts(log, "waiting") == 1, "the copy to wait")
    assert status(copy) == "running" and _log_counts(log, "read") == 1  # the warm-up only
    lines = [Read("held reading, as the test stored it", 0.91, (0, 0, 160, 32))]
    with session_scope(sessions) as s:
        if original == "succeeds":
            assert write_result(
                s, claim, text=lines[0].text, confidence=0.91, lines=lines, model="test",
                processing_ms=1, size=(160, 32),
            )  # fmt: skip
        else:
            freed: list[uuid.UUID] = []
            assert write_failure(s, claim, code="worker_lost", message="x", freed=freed)
            assert freed == [copy.pages[0].id]
    if original == "fails":  # sent to its queue, as the worker's batch sends them
        send([str(i) for i in freed], queue=page_queue(settings, model=None, tenant_id=tenant))
    wait_for(lambda: status(copy) == "succeeded", "the copy")
    page = jobs.get_page(sessions=sessions, tenant_id=tenant, job_id=copy.id, index=0)
    with sessions() as s:
        events = s.scalar(select(func.count()).where(WebhookEvent.job_id == copy.id))
    assert events == 1
    if original == "succeeds":
        assert _reused_from(page) == (held.id, 0)
        assert [ln.text for ln in page.lines] == [lines[0].text]
        assert _log_counts(log, "read") == 1  # nothing read twice
    else:
        assert page.reused_from is None and page.error is None
        wait_for(lambda: _log_counts(log, "read") == 2, "the copy's own reading")
    delete_job(sessions=sessions, storage=storage, tenant_id=tenant, job_id=held.id)
