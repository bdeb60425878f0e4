"""Tables: a job holds pages; a page holds the lines read from it.

The constraints carry the exactly-once guarantees: ``UNIQUE(job_id, index)`` on pages,
``UNIQUE(page_id, index)`` on lines (a page processed twice can never hold two sets of lines)
and ``UNIQUE(idempotency_key)`` on jobs (a repeated submission finds the first job).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PAGE_STATES = ("queued", "running", "succeeded", "failed")
FINISHED_STATES = ("succeeded", "failed")
JOB_MODES = ("page", "line")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on PostgreSQL and on SQLite (which stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    # Stable constraint names so that migrations can refer to them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


#: The tenant of every request while ``HTRQ_AUTH=off``, and of jobs made before tenants.
DEFAULT_TENANT = "default"


class Tenant(Base):
    """Who owns jobs: each API key belongs to one, and sees only its jobs."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: HMAC-SHA256 key that signs the tenant's webhooks (kept, not hashed: it must sign),
    #: encrypted under ``HTRQ_SECRET_KEY`` where one is set (``htrq.tenants.secretbox``).
    webhook_secret: Mapped[str] = mapped_column(Text)
    #: The secret a rotation replaced, which signs beside the new one until
    #: ``webhook_secret_previous_until`` (``htrq tenants rotate-secret``).
    webhook_secret_previous: Mapped[str | None] = mapped_column(Text)
    webhook_secret_previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """A bearer key: only its SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(255))
    #: The key's first characters, to tell keys apart in a list (not enough to guess it).
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("mode", JOB_MODES), name="mode"),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    #: ``Idempotency-Key`` header, else ``external_id:<external_id>``; NULL: no dedup.
    #: Unique per tenant: two tenants using the same key get two jobs.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    #: Digest of what was submitted, to tell a repeat from a different job under the same key.
    fingerprint: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(255), index=True)
    #: ``page`` (segment the page into lines) or ``line`` (each image is one line).
    mode: Mapped[str] = mapped_column(String(16), default="page")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Where the completion webhook goes (checked at submit).
    callback_url: Mapped[str | None] = mapped_column(Text)
    #: When the last page finished (NULL while any page is queued or running).
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: How many times the job has finished (a retry that finishes it again counts again):
    #: numbers its webhook events.
    completions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The model the job asked for (one of ``HTRQ_MODELS``); NULL: the deployment's default.
    model: Mapped[str | None] = mapped_column(String(255))
    #: The language whose lexicon steers the reading (``none``: the glyphs alone); NULL for
    #: jobs from before languages, read without a lexicon.
    language: Mapped[str | None] = mapped_column(String(16))
    #: Its pages may take the reading of an identical page the tenant already had read
    #: (``htrq.jobs.reuse``); False: each page is read afresh.
    reuse: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: The tenant's own model that reads the job (``POST /v1/models``); ``model`` is then the
    #: deployment's model whose workers serve it. Kept when the model is deleted (the pages
    #: then fail ``unknown_model`` if they are still to be read).
    tenant_model_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    pages: Mapped[list[Page]] = relationship(
        back_populates="job", order_by="Page.index", cascade="all, delete-orphan"
    )


class Page(Base):
    __tablename__ = "pages"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        CheckConstraint(_in("status", PAGE_STATES), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
        # The sweeper's two scans: expired leases and long-queued pages.
        Index("ix_pages_status_lease_until", "status", "lease_until"),
        Index("ix_pages_status_queued_at", "status", "queued_at"),
        Index("ix_pages_blob_key", "blob_key"),
        # Reuse (htrq.jobs.reuse): a page's earlier readings by key, and the few pages that
        # wait for one being read (a partial index: nearly every page waits for nothing).
        Index("ix_pages_reading_key", "reading_key"),
        Index(
            "ix_pages_waiting_on",
            "waiting_on",
            postgresql_where=text("waiting_on IS NOT NULL"),
            sqlite_where=text("waiting_on IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    #: Position in the job, from 0, consecutive across all uploaded files.
    index: Mapped[int] = mapped_column(Integer)
    #: Storage key of the uploaded file and the page (frame) within it.
    blob_key: Mapped[str] = mapped_column(String(128))
    frame: Mapped[int] = mapped_column(Integer, default=0)
    filename: Mapped[str | None] = mapped_column(String(255))

    status: Mapped[str] = mapped_column(String(16), default="queued")
    #: Claims so far; also the fencing token of the current claim, so it only ever grows.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The page fails once ``attempts`` reaches this; ``retry`` raises it instead of
    #: resetting ``attempts``, which would reuse fencing tokens.
    attempt_limit: Mapped[int] = mapped_column(Integer)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the page's latest message was sent (the sweeper re-sends lost ones).
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    model: Mapped[str | None] = mapped_column(String(255))
    #: Provenance of the reading: SHA-256 of the model's weights, the decoding settings
    #: (JSON: beams, CTC weight, dtype, device) and the htrq version that read the page.
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    decoding: Mapped[str | None] = mapped_column(Text)
    htrq_version: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Wall time of the pipeline for the page's group, in milliseconds.
    processing_ms: Mapped[int | None] = mapped_column(Integer)
    #: Size in pixels of the page image the line coordinates refer to (the uploaded image,
    #: or the PDF page as rendered at ``HTRQ_PDF_DPI``); set with the result.
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    #: Read in a group of its own: its last group ran past the time limit. Such a page that
    #: runs past it alone fails with ``too_slow`` instead of being put back again.
    read_alone: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: What its reading depends on, digested (``htrq.jobs.reuse.reading_key``: the tenant, the
    #: file and frame, the job's mode, the model's name and weights, the reading settings),
    #: set by the worker that claims it; pages with the same key read alike. NULL: never
    #: claimed, or claimed by a worker whose weights could not be digested.
    reading_key: Mapped[str | None] = mapped_column(String(64))
    #: The page with the same key that is being read and whose reading this page takes when
    #: it is stored (this one is ``running`` meanwhile and reads nothing). Not a foreign key:
    #: the reader's deletion frees its waiters (``htrq.jobs.deletion``).
    waiting_on: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    #: The page whose reading was copied into this one: its job and index, kept as values,
    #: not references, so that deleting that job leaves this page as it is.
    reused_from_job: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    reused_from_page: Mapped[int | None] = mapped_column(Integer)
    #: The tenant model that read the page (``tenant_models.id``, kept as a value so that
    #: deleting the model leaves the page's provenance); NULL: a deployment's model.
    model_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    job: Mapped[Job] = relationship(back_populates="pages")
    lines: Mapped[list[Line]] = relationship(
        back_populates="page", order_by="Line.index", cascade="all, delete-orphan"
    )


class Line(Base):
    __tablename__ = "lines"
    __table_args__ = (
        UniqueConstraint("page_id", "index"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
    )

    # SQLite only auto-increments INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    page_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    #: Outline and baseline as JSON ``[[x, y], ...]`` in page pixels, where the segmenter
    #: gives them (text, not a JSON type: the same on PostgreSQL and SQLite, never queried).
    polygon: Mapped[str | None] = mapped_column(Text)
    baseline: Mapped[str | None] = mapped_column(Text)
    #: The model's words, ``[{"text", "box": [x0, y0, x1, y1], "confidence"}, ...]`` in page
    #: pixels and reading order (``htrq.words``); None on lines stored before words were.
    words: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON().with_variant(JSONB(), "postgresql")
    )
    #: Where the words' boxes come from: ``ctc`` (the model's alignment) or ``estimate``.
    box_source: Mapped[str | None] = mapped_column(String(16))
    #: A person's correction of ``text`` (the model's reading, which is kept), and when it
    #: was made; ``reviewed_at``: when a person confirmed the line (corrected or not).
    correction: Mapped[str | None] = mapped_column(Text)
    corrected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    page: Mapped[Page] = relationship(back_populates="lines")


WEBHOOK_STATES = ("pending", "delivered", "failed")
MODEL_STATES = ("queued", "training", "ready", "failed", "cancelled")
#: States a tenant model's training has left for good.
MODEL_FINISHED = ("ready", "failed", "cancelled")


class TenantModel(Base):
    """A tenant's own model, fine-tuned on its corrected lines (``POST /v1/models``).

    A trainer claims it with a lease (``trainer_token`` fences a trainer that lost it) and
    keeps the lease alive while it trains; its last checkpoint and, once ready, the model
    itself are blobs in the store, so that any trainer resumes it and any worker loads it.
    """

    __tablename__ = "tenant_models"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint(_in("status", MODEL_STATES), name="status"),
        Index("ix_tenant_models_status_lease", "status", "lease_until"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(48))
    #: ``builtin`` (the deployment's model) or the id of another model of the tenant.
    base: Mapped[str] = mapped_column(String(64))
    #: SHA-256 of the base's weights, set when the training starts.
    base_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    steps: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)
    #: Only lines checked at or after this time train it (NULL: all of them).
    lines_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The recipe (JSON: steps, batch size, learning rate, warm-up, augmentation, seed).
    recipe: Mapped[str] = mapped_column(Text)
    train_lines: Mapped[int | None] = mapped_column(Integer)
    heldout_lines: Mapped[int | None] = mapped_column(Integer)
    heldout_jobs: Mapped[int | None] = mapped_column(Integer)
    base_cer: Mapped[float | None] = mapped_column(Float)
    cer: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: Where ``model.ready`` / ``model.failed`` go (checked like a job's callback).
    callback_url: Mapped[str | None] = mapped_column(Text)
    #: Claims so far: the fencing token of the current one, and what ``train_max_attempts``
    #: counts.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When its training message was last sent (the sweeper re-sends a lost one).
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Blob keys: the last checkpoint (weights and optimizer, a tar) and the model (a tar).
    checkpoint_key: Mapped[str | None] = mapped_column(String(128))
    artifact_key: Mapped[str | None] = mapped_column(String(128))
    #: SHA-256 of the trained weights (``model.safetensors``): what provenance records.
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReviewLink(Base):
    """A review link given out (``POST /v1/jobs/{id}/review-link``): only its token's SHA-256
    is stored; it opens its job until it expires, is revoked, or the key that made it is."""

    __tablename__ = "review_links"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    #: The API key that asked for it (None while ``HTRQ_AUTH=off``): revoking the key ends it.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """A completion event to POST to a job's callback URL (a transactional outbox).

    Written in the transaction that finishes the job, so exactly one exists per completion;
    a dispatcher in the workers sends it, again with backoff until a 2xx answer.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint(_in("status", WEBHOOK_STATES), name="status"),
        CheckConstraint("(job_id IS NULL) <> (model_id IS NULL)", name="one_subject"),
        Index("ix_webhook_events_due", "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: The job whose completion it reports, or (``model_id``) the tenant model whose training
    #: ended: exactly one of the two is set.
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenant_models.id", ondelete="CASCADE"), index=True
    )
    #: The job's completion this event reports (1 for the first, 2 after a retry, ...).
    seq: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    #: The exact JSON body sent (and signed).
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer)  #: HTTP status of the last try
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
