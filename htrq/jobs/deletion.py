"""Deleting jobs: a client's DELETE, and the retention sweep.

A job goes with its pages, lines and webhook events (the foreign keys cascade) and with
every stored file no other page uses. A page that a worker is reading meanwhile finishes
into nothing: its result is written only while its claim holds, and its row is gone.

Pages copied from the job's pages (``htrq.jobs.reuse``) hold their own rows, and their files
are theirs too (a file stays stored while any page uses it), so they stay as they are; pages
that were waiting for one of the job's pages being read go back to the queue, to be read
themselves.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.jobs import owned_job
from htrq.jobs.claims import routes_of
from htrq.jobs.reuse import release_waiters
from htrq.models import Job, Page
from htrq.queue import Send, page_queue
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.storage.blobs import lock_blobs, remove_unused

log = logging.getLogger(__name__)


def delete_job(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    send: Send | None = None,
    settings: Settings | None = None,
) -> None:
    """Delete the tenant's job and its files (:class:`htrq.jobs.NotFound` if it has none).

    Pages that waited for one of its pages' reading are sent to their queues with ``send``
    (and ``settings``, which name the queues); without them the sweeper re-sends them once
    they have been ``queued`` for its grace period.
    """
    with session_scope(sessions) as s:
        job = owned_job(s, tenant_id, job_id, lock=True)
        freed = _delete(s, storage, job.id)
        routes = routes_of(s, freed)
    if send is None or settings is None or not freed:
        return
    by_queue: dict[str, list[str]] = defaultdict(list)
    for page_id, (tenant, model) in routes.items():
        by_queue[page_queue(settings, model=model, tenant_id=tenant)].append(str(page_id))
    for queue, ids in by_queue.items():
        try:
            send(ids, 0, queue=queue)
        except Exception:
            log.warning("could not enqueue %d pages; the sweeper will re-send them", len(ids))


def purge_finished(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    finished_before: datetime,
    limit: int = 100,
) -> list[uuid.UUID]:
    """Delete up to ``limit`` jobs (any tenant's) that finished before ``finished_before``."""
    with sessions() as s:
        ids = s.scalars(select(Job.id).where(Job.finished_at < finished_before).limit(limit)).all()
    purged = []
    for job_id in ids:
        with session_scope(sessions) as s:
            job = s.scalars(
                select(Job)
                .where(Job.id == job_id, Job.finished_at < finished_before)
                .with_for_update()
            ).first()
            if job is None:  # retried or deleted meanwhile
                continue
            _delete(s, storage, job_id)  # finished: none of its pages has a waiter
        purged.append(job_id)
    if purged:
        log.info("retention: deleted %d jobs finished before %s", len(purged), finished_before)
    return purged


def _delete(session: Session, storage: BlobStore, job_id: uuid.UUID) -> list[uuid.UUID]:
    """Delete the job and its unshared files; returns the pages (of other jobs) that waited
    for one of its pages and are now ``queued``, for the caller to send."""
    pages = session.execute(select(Page.id, Page.blob_key).where(Page.job_id == job_id)).all()
    keys = {p.blob_key for p in pages}
    lock_blobs(session, keys)
    session.execute(delete(Job).where(Job.id == job_id))
    session.flush()
    # After the delete, which waited for any transaction that was attaching a waiter to
    # these pages (it holds their rows), so that this sees every waiter.
    freed = release_waiters(session, [p.id for p in pages])
    # Removed before the commit, under the locks: if the commit then failed, the job would
    # stay with files missing (its pages would fail with blob_missing), never the reverse,
    # a deleted job whose bytes stay stored.
    remove_unused(session, storage, keys)
    return freed
