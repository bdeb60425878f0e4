"""Deleting jobs: a client's DELETE, and the retention sweep.

A job goes with its pages, lines and webhook events (the foreign keys cascade) and with
every stored file no other page uses. A page that a worker is reading meanwhile finishes
into nothing: its result is written only while its claim holds, and its row is gone.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.jobs import owned_job
from htrq.models import Job, Page
from htrq.storage import BlobStore
from htrq.storage.blobs import lock_blobs, remove_unused

log = logging.getLogger(__name__)


def delete_job(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
) -> None:
    """Delete the tenant's job and its files (:class:`htrq.jobs.NotFound` if it has none)."""
    with session_scope(sessions) as s:
        job = owned_job(s, tenant_id, job_id, lock=True)
        _delete(s, storage, job.id)


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
            _delete(s, storage, job_id)
        purged.append(job_id)
    if purged:
        log.info("retention: deleted %d jobs finished before %s", len(purged), finished_before)
    return purged


def _delete(session: Session, storage: BlobStore, job_id: uuid.UUID) -> None:
    keys = session.scalars(select(Page.blob_key).where(Page.job_id == job_id).distinct()).all()
    lock_blobs(session, keys)
    session.execute(delete(Job).where(Job.id == job_id))
    session.flush()
    # Removed before the commit, under the locks: if the commit then failed, the job would
    # stay with files missing (its pages would fail with blob_missing), never the reverse,
    # a deleted job whose bytes stay stored.
    remove_unused(session, storage, keys)
