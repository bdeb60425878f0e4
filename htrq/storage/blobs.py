"""Stored files shared between jobs, kept or removed safely.

Files are stored once per content (their key is their SHA-256), so two jobs, or two
tenants, may hold pages of the same file. Deleting a job removes a file only when no page
uses it any more; a submit that stores the same content at that moment must not lose it.
Both take a PostgreSQL advisory lock per file key, held to the end of their transaction,
so that one waits for the other. SQLite (``htrq transcribe``) has one writer: no locks.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from htrq.models import Page
from htrq.storage import BlobStore


def lock_blobs(session: Session, keys: Iterable[str]) -> None:
    """Take the transaction-scoped lock of each file key (sorted: no two waiters deadlock)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted(set(keys)):
        # An advisory lock takes a bigint: the key's first 15 hex digits fit one.
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(key[:15], 16)})


def unused(session: Session, keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` that no page refers to (call with their locks held)."""
    keys = sorted(set(keys))
    if not keys:
        return []
    used = set(
        session.scalars(
            select(Page.blob_key).where(Page.blob_key.in_(keys)).group_by(Page.blob_key)
        ).all()
    )
    return [k for k in keys if k not in used]


def remove_unused(session: Session, storage: BlobStore, keys: Iterable[str]) -> int:
    """Delete the files among ``keys`` that no page uses any more; how many were deleted."""
    gone = unused(session, keys)
    for key in gone:
        storage.delete(key)
    return len(gone)
