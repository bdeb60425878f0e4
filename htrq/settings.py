"""Configuration from ``HTRQ_*`` environment variables, read once at start and passed in."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from htrq.resources import CTC_WEIGHT, REVIEW_BELOW

ENV_PREFIX = "HTRQ_"

#: Widths a line may be read at (``HTRQ_STRETCHES``): each is one more reading of every line.
MAX_STRETCHES = 5


def stretches_text(factors: tuple[float, ...] | list[float]) -> str:
    """Width factors as ``HTRQ_STRETCHES`` writes them (``1,1.1,1.2``)."""
    return ",".join(f"{f:g}" for f in factors)


class SettingsError(Exception):
    """A configuration value is wrong; the message names the environment variable."""


@dataclass(frozen=True)
class StorageLocation:
    """Where blobs live: a directory (``path``) or a bucket and a prefix in it."""

    scheme: str  #: ``file`` or ``s3``
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_storage_url(url: str) -> StorageLocation:
    """``file:///srv/htrq/blobs`` or ``s3://bucket/prefix``; raises ValueError otherwise.

    The messages never repeat what stands before ``@``: a credential put in the URL.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("file", "s3"):
        raise ValueError("expected file:///absolute/path or s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise ValueError("a storage URL takes no query (?) or fragment (#)")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("a file URL takes an absolute path: file:///srv/htrq/blobs")
        return StorageLocation("file", path=Path(unquote(parts.path)))
    if "@" in parts.netloc:
        raise ValueError(
            "credentials do not go in the URL: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not parts.netloc:
        raise ValueError("an s3 URL names its bucket: s3://bucket/prefix")
    return StorageLocation("s3", bucket=parts.netloc, prefix=unquote(parts.path).strip("/"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: SQLAlchemy URL of the database. Unset: ``htrq transcribe`` uses a throwaway SQLite file
    #: and the server commands refuse to start.
    database_url: str | None = None
    #: Celery broker URL (Redis). Unset: ``htrq transcribe`` uses an in-process queue.
    broker_url: str | None = None
    #: Where uploaded bytes are stored: ``file:///path`` (a directory every process can read,
    #: such as NFS) or ``s3://bucket/prefix`` (any S3-compatible store). Unset: the directory
    #: ``storage_dir``.
    storage_url: str | None = None
    #: Directory of the blob store when ``storage_url`` is unset (kept for older setups).
    storage_dir: Path = Path("var/blobs")
    #: Endpoint of an S3-compatible store that is not AWS (MinIO, Ceph RGW), such as
    #: ``http://minio:9000``. Unset: AWS S3 in the region boto3 finds (``AWS_DEFAULT_REGION``).
    s3_endpoint_url: str | None = None

    #: ``required``: every ``/v1`` request needs ``Authorization: Bearer <key>`` (keys from
    #: ``htrq keys create``). ``off``: no keys, every request is the ``default`` tenant's;
    #: only for a trusted network (the API logs a warning at start).
    auth: Literal["required", "off"] = "required"
    #: Database connections each API process keeps (no overflow beyond them): requests past
    #: it wait for a free one instead of opening and closing connections under load, which
    #: costs PostgreSQL a new backend each time. Size the server's ``max_connections`` for
    #: API processes x this + workers.
    api_db_pool: int = Field(10, ge=1, le=200)
    #: Threads each API process runs its routes on (AnyIO's pool; its own default is 40).
    #: More than ``api_db_pool`` only adds threads that wait for a connection.
    api_threads: int = Field(16, ge=1, le=400)
    #: Largest whole upload request in bytes (all files together), checked as it streams in.
    max_request_bytes: int = Field(2 * 1024**3, ge=1)
    #: Seconds a client has to send a request's line and headers, from the moment its
    #: connection opens (or its previous answer was sent); past it, 408 and the connection
    #: closes. A client that trickles its headers holds a socket no longer than this.
    api_header_seconds: float = Field(10.0, gt=0)
    #: Slowest upload the API keeps reading, in bytes per second over 10-second windows; a
    #: slower client is disconnected. 0: no bound.
    api_body_min_rate: int = Field(1024, ge=0)
    #: Requests per second each tenant may make to ``/v1`` (a token bucket kept in the
    #: broker's Redis, so every API process and machine enforces one limit); past it, 429
    #: ``rate_limited`` with ``Retry-After``. 0: no limit.
    tenant_rate: float = Field(50.0, ge=0)
    #: Requests a tenant may make at once after idling: the size of its token bucket.
    tenant_burst: int = Field(100, ge=1)
    #: Submissions, exports and page images each tenant may have in progress at once, over
    #: every API process; past it, 429 ``too_many_concurrent`` with ``Retry-After``. 0: no
    #: limit.
    tenant_heavy: int = Field(4, ge=0)
    #: Longest a heavy request holds its slot: the slot of an API process killed mid-request
    #: stops counting after this (a request that runs longer stops counting too).
    tenant_slot_seconds: float = Field(600.0, gt=0)
    #: First re-send delay of a completion webhook that was not answered 2xx; doubles.
    webhook_backoff: float = Field(5.0, gt=0)
    #: Cap on the webhook re-send delay.
    webhook_backoff_max: float = Field(3600.0, gt=0)
    #: Attempts per webhook event before it is marked ``failed``.
    webhook_max_attempts: int = Field(12, ge=1)
    #: Seconds one webhook delivery may take in all, from connecting to the answer's status
    #: line (a receiver that answers a byte at a time is cut off at it). Past it the attempt
    #: counts as failed with ``timeout`` and is tried again after the backoff.
    webhook_timeout: float = Field(10.0, gt=0)
    #: Webhook deliveries each worker makes at once: a slow receiver holds one of them, not
    #: the others' events.
    webhook_concurrency: int = Field(8, ge=1, le=256)
    #: Of those, at most this many for one tenant's events at once, so that one tenant's slow
    #: receiver cannot take every slot.
    webhook_tenant_concurrency: int = Field(2, ge=1, le=256)
    #: Allow callback URLs on loopback, private (10/8, 172.16/12, 192.168/16, 100.64/10,
    #: fc00::/7), link-local and local-use NAT64 addresses (tests, a DMS on the same private
    #: network). Cloud metadata addresses stay refused. Off: such URLs are refused with 422
    #: unless ``webhook_allow_networks`` lists them. Prefer ``webhook_allow_networks``.
    webhook_allow_private: bool = False
    #: Networks callback URLs may reach although they are not public, comma-separated
    #: (``10.20.0.0/16,fd12:3456::/48``). A cloud metadata address (169.254.169.254,
    #: fd00:ec2::254, ...) is allowed only when listed on its own, never by a network around
    #: it.
    webhook_allow_networks: str | None = None
    #: Seconds between the workers' looks for webhook events to send.
    webhook_poll: float = Field(1.0, gt=0)
    #: Key the tenants' webhook secrets are stored encrypted under, at least 32 characters
    #: (``htrq.tenants.secretbox``); several, comma-separated, while changing it: the first
    #: encrypts, each decrypts (then ``htrq tenants encrypt-secrets``). Unset: new secrets are
    #: stored in plain text, and the API logs a warning at start.
    secret_key: str | None = None
    #: Seconds a review link stays valid unless its request asks for less or more (at most
    #: a week).
    review_link_seconds: int = Field(8 * 3600, ge=60, le=7 * 86400)
    #: The API's address as people's browsers reach it (``https://htr.example.org``), for the
    #: review links it gives out. Unset: the address the request came to.
    public_url: str | None = None
    #: Finished jobs older than this many days are deleted (rows and stored files) by the
    #: sweeper. Unset: kept until deleted.
    retention_days: float | None = Field(None, gt=0)

    #: Recognition model: ``builtin`` (shipped in the repo), a local directory or a hub id.
    #: A worker loads it and serves its queue (``htrq.<model>``); for the API it is the model
    #: of a job that names none.
    model: str = "builtin"
    #: Models a job may name in its ``model`` field, comma-separated, each as a worker's
    #: ``HTRQ_MODEL`` names it (``builtin,/models/trocr-ft``). ``HTRQ_MODEL`` is always
    #: allowed; unset: only it.
    models: str | None = None
    #: One queue per tenant within each model's, consumed in rotation, so that one tenant's
    #: backlog does not hold back another's pages. Off: one queue per model, first come first
    #: served.
    fair_share: bool = True
    #: Seconds between a worker's looks for new tenants, whose queues it then consumes.
    queue_refresh: float = Field(5.0, gt=0)
    #: Torch device: ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = "cpu"
    #: Weights dtype; half precision is for GPUs.
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    #: ``int8``: the model's linear layers in int8 on CPU workers (dynamic quantization);
    #: ``none``: as trained. The model card has the speed and CER of both.
    quantize: Literal["none", "int8"] = "none"
    #: Widths each line is read at, as factors of its own width, comma-separated; the reading
    #: the model finds likeliest is kept. ``1,1.1,1.2`` reads every line three times: the
    #: model card has what that buys on real handwriting for three times the recognition time.
    stretches: str = "1"
    #: Line crops per ``generate()`` call.
    batch_size: int = Field(16, ge=1, le=1024)
    #: Beam width; 1 is greedy decoding.
    num_beams: int = Field(4, ge=1, le=32)
    #: Share of the CTC head's prefix score in decoding (joint CTC/attention decoding), for
    #: models that ship ``ctc_head.safetensors`` as the built-in one does; 0 turns it off.
    ctc_weight: float = Field(CTC_WEIGHT, ge=0, le=1)
    #: Place each word on its line by the CTC head's forced alignment (``box_source: ctc``),
    #: for models with a head over the line's columns as the built-in one has. Off: the words'
    #: boxes are the line's box split by character counts (``estimate``), for 1-6% less
    #: reading time (docs/benchmarks.md, "Words").
    word_boxes: bool = True
    #: The language a job is read in when it names none: its lexicon steers decoding towards
    #: the language's words (``worker/recognition/word_prior.py``); ``none`` reads by the
    #: glyphs alone. One of ``HTRQ_LANGUAGES`` or ``none``.
    language: str = "none"
    #: Languages a job may name, comma-separated: the lexicons the workers ship
    #: (``worker/lexicons/<language>.tsv.gz``).
    languages: str = "en,fr"
    #: Weight of the lexicon's bonus against the decoder's log-probabilities (0: off).
    word_weight: float = Field(0.3, ge=0, le=5)
    #: What a word pays once where it leaves the lexicon (a name, a number, an old spelling):
    #: log(floor) times the weight; after that the word reads as without the lexicon.
    word_floor: float = Field(0.1, gt=0, lt=1)
    #: Longest line, in tokens, the decoder may produce.
    max_new_tokens: int = Field(96, ge=1, le=1024)
    #: Lines with a confidence below this say ``needs_review``. The default is calibrated for
    #: the built-in model; choose another model's with ``htrq eval --review-below``.
    review_below: float = Field(REVIEW_BELOW, ge=0, le=1)

    #: How long a claimed page may stay ``running`` before the sweeper takes it back.
    #: Keep it longer than the slowest batch.
    lease_seconds: float = Field(600, gt=0)
    #: Attempts per page (claims, including redeliveries) before it is ``failed``.
    max_attempts: int = Field(3, ge=1, le=100)
    #: Pages per worker batch (celery-batches ``flush_every``).
    flush_every: int = Field(16, ge=1, le=1024)
    #: Seconds a partial batch waits for more pages (celery-batches ``flush_interval``).
    flush_interval: float = Field(1.0, gt=0)
    #: Worker processes per ``htrq worker``, each with its own copy of the model.
    worker_concurrency: int = Field(1, ge=1, le=64)
    #: Torch CPU threads per worker process; 0 divides the machine's cores among the
    #: ``worker_concurrency`` processes, so that they do not oversubscribe the CPU.
    torch_threads: int = Field(0, ge=0, le=1024)
    #: Port on which ``htrq worker`` serves Prometheus metrics (``htrq_worker_*``, merged over
    #: its pool processes); 0 serves none.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    #: Address the worker's metrics port listens on.
    worker_metrics_addr: str = "0.0.0.0"
    #: Seconds between sweeps for expired leases and lost messages.
    sweep_interval: float = Field(30.0, gt=0)
    #: A page ``queued`` this long while the broker queue is empty lost its message.
    queued_grace_seconds: float = Field(300.0, gt=0)
    #: First re-send delay after a transient error; doubles per attempt.
    retry_backoff: float = Field(2.0, ge=0)
    #: Cap on the re-send delay.
    retry_backoff_max: float = Field(60.0, ge=0)

    #: Largest page image, in pixels, after decoding.
    max_pixels: int = Field(60_000_000, ge=1)
    #: Largest accepted upload, per file, in bytes.
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1)
    #: Most pages one job may hold.
    max_pages_per_job: int = Field(500, ge=1)
    #: Widest (or tallest) page accepted, as its long side over its short side. Checked from
    #: the header before decoding: a 3,000,000 x 2 PNG is a few KB and would otherwise be cut
    #: into tens of thousands of pieces. 100 admits any real line (a 3,000 x 60 line is 50).
    max_aspect: float = Field(100.0, ge=1)
    #: Most lines one page may hold (``too_many_lines``): what one page may cost to read.
    max_lines_per_page: int = Field(1000, ge=1)
    #: Seconds a worker may spend on one group of pages. Past it, the pages are put back
    #: (their attempt not counted) and read one by one; a page that takes longer on its own
    #: fails with ``too_slow``. At most half of ``lease_seconds`` (a batch may read one page
    #: alone after its group); unset: half of it (300 s by default).
    group_time_limit: float | None = Field(None, gt=0)
    #: Seconds one PDF page may take to render (``too_slow`` past it).
    pdf_render_seconds: float = Field(30.0, gt=0)
    #: PDF render processes each API process keeps (``htrq.rendering``): PDFium is not
    #: thread-safe, so it never runs in the request threads. Page images, PDF exports and the
    #: inspection at submit share them; a request that waits longer than
    #: ``pdf_render_seconds`` for a free one is answered 503 ``render_busy``. Each costs a
    #: process and, while it renders, one page's pixels in memory.
    pdf_renderers: int = Field(2, ge=1, le=64)
    #: Resolution at which PDF pages are rendered.
    pdf_dpi: int = Field(300, ge=50, le=1200)
    #: Margin in pixels added around each line box before recognition.
    line_margin: int = Field(4, ge=0)
    #: Line segmenter for ``mode=page``: ``classical`` (OpenCV, no model), ``projection``
    #: (row profiles; unruled, level pages only) or ``kraken`` (neural baselines; needs the
    #: optional kraken package). bench/segmentation.md has the figures behind the default.
    segmenter: Literal["classical", "projection", "kraken"] = "classical"

    #: Tenant models (``POST /v1/models``). Fewest corrected or confirmed lines a training
    #: takes (``too_few_lines`` below): a tenth or more are held out to measure it.
    train_min_lines: int = Field(50, ge=2)
    #: Training steps of a tenant model whose request names none; 0: ``HTRQ_TRAIN_EPOCHS``
    #: passes over its lines, so that a hundred lines are not learnt by heart and a thousand
    #: are not under-trained (docs/training.md has the measurements).
    train_steps: int = Field(0, ge=0)
    #: Passes over a tenant's lines when neither the request nor ``HTRQ_TRAIN_STEPS`` names
    #: the steps: steps = passes x lines / ``HTRQ_TRAIN_BATCH_SIZE``, up to
    #: ``HTRQ_TRAIN_MAX_STEPS``.
    train_epochs: float = Field(24, gt=0, le=1000)
    #: Most training steps a tenant model may ask for.
    train_max_steps: int = Field(5000, ge=1)
    #: Lines per training step of a tenant model's fine-tune.
    train_batch_size: int = Field(16, ge=1, le=512)
    #: Peak learning rate of a tenant model's fine-tune (cosine schedule after a warm-up).
    train_lr: float = Field(1e-4, gt=0, le=1)
    #: Torch CPU threads of ``htrq trainer``; 0: half the cores, so that a host that also
    #: reads pages keeps reading.
    trainer_threads: int = Field(0, ge=0, le=1024)
    #: Seconds a trainer's claim on a model lasts without a heartbeat (it beats every few
    #: steps); past it, another trainer or the sweeper takes the model back.
    train_lease_seconds: float = Field(300, gt=0)
    #: Claims of one model's training (a trainer that died counts one) before it fails with
    #: ``training_failed``.
    train_max_attempts: int = Field(3, ge=1, le=100)
    #: Steps between checkpoints sent to the blob store, from which a resumed training goes on.
    train_checkpoint_every: int = Field(50, ge=1)
    #: Tenant models each worker process keeps loaded (least recently used goes first).
    model_cache: int = Field(4, ge=1, le=256)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError("expected cpu, cuda, cuda:N or mps")
        return v

    @model_validator(mode="after")
    def _limits_fit_the_lease(self) -> Settings:
        if self.group_time_limit is not None and 2 * self.group_time_limit > self.lease_seconds:
            # A batch reads its group and at most one page alone, each within the limit.
            raise ValueError(
                "group_time_limit must be at most half of lease_seconds, or the sweeper takes "
                "pages back from a worker that is still within its time"
            )
        return self

    @field_validator(
        "database_url",
        "broker_url",
        "storage_url",
        "s3_endpoint_url",
        "secret_key",
        "public_url",
        "models",
        "webhook_allow_networks",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        if v is not None:
            parse_storage_url(v)  # raises ValueError saying what is expected
        return v

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected http(s)://host[:port], such as http://minio:9000")
            if "@" in parts.netloc:
                raise ValueError(
                    "credentials do not go in the URL: use AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY"
                )
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected http(s)://host[:port][/prefix]")
            v = v.rstrip("/")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: str | None) -> str | None:
        if v is not None and any(not m.strip() for m in v.split(",")):
            raise ValueError("expected model names separated by commas, none empty")
        return v

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, v: str | None) -> str | None:
        if v is not None and any(len(k.strip()) < 32 for k in v.split(",")):
            raise ValueError("each key must be at least 32 characters (comma-separated keys)")
        return v

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, v: str | None) -> str | None:
        if v is not None:
            _parse_networks(v)  # raises ValueError naming the bad entry
        return v

    @property
    def allow_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``webhook_allow_networks`` as networks."""
        return _parse_networks(self.webhook_allow_networks or "")

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: str) -> str:
        names = [n.strip() for n in v.split(",")]
        if any(not n or not n.isascii() or not n.replace("-", "").isalnum() for n in names):
            raise ValueError("expected language codes separated by commas, such as en,fr")
        if "none" in names:
            raise ValueError("`none` is always allowed; list languages with a lexicon")
        return ",".join(names)

    @model_validator(mode="after")
    def _language_known(self) -> Settings:
        if self.language != "none" and self.language not in self.allowed_languages:
            raise ValueError(
                f"HTRQ_LANGUAGE={self.language!r} is not in HTRQ_LANGUAGES "
                f"({self.languages}) and is not `none`"
            )
        return self

    @property
    def allowed_languages(self) -> tuple[str, ...]:
        """The languages a job may name besides ``none``."""
        return tuple(n for n in self.languages.split(",") if n)

    @field_validator("stretches")
    @classmethod
    def _stretches(cls, v: str) -> str:
        try:
            factors = [float(f) for f in v.split(",")]
        except ValueError:
            raise ValueError(
                "expected width factors separated by commas, such as 1,1.1,1.2"
            ) from None
        if not all(0.5 <= f <= 2.0 for f in factors) or len(set(factors)) != len(factors):
            raise ValueError("expected distinct width factors from 0.5 to 2")
        if len(factors) > MAX_STRETCHES:
            raise ValueError(f"at most {MAX_STRETCHES} widths (each costs a reading)")
        return stretches_text(factors)

    @property
    def stretch_factors(self) -> tuple[float, ...]:
        """``stretches`` as numbers."""
        return tuple(float(f) for f in self.stretches.split(","))

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The models a job may ask for: ``HTRQ_MODEL`` first, then ``HTRQ_MODELS``."""
        listed = [m.strip() for m in (self.models or "").split(",") if m.strip()]
        return tuple(dict.fromkeys([self.model, *listed]))

    @property
    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged message.

        Celery's default is an hour; a small multiple of the lease means a crashed worker's
        prefetched pages come back in minutes. Redelivering to a live worker is harmless: the
        claim drops duplicates.
        """
        return max(30, math.ceil(2 * self.lease_seconds + self.retry_backoff_max))

    @property
    def group_seconds(self) -> float:
        """The time limit per group in force (``group_time_limit`` or half the lease)."""
        return self.group_time_limit or self.lease_seconds / 2

    def trainer_threads_for(self, cpus: int) -> int:
        """Torch threads for ``htrq trainer`` on a machine with ``cpus`` cores."""
        return self.trainer_threads or max(1, cpus // 2)

    def threads_per_process(self, cpus: int) -> int:
        """Torch threads for one worker process on a machine with ``cpus`` cores."""
        return self.torch_threads or max(1, cpus // self.worker_concurrency)

    @property
    def prefetch_multiplier(self) -> int:
        """Messages each worker process reserves, so that a full group can wait while one runs.

        celery-batches keeps a group unacknowledged until it returns, so the prefetch window
        must hold two groups for the next one to fill during recognition.
        """
        return max(1, math.ceil(2 * self.flush_every / self.worker_concurrency))


def _parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``10.0.0.0/8, fd12::/16, 192.0.2.7`` as networks; ValueError naming a bad entry."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=True))
            except ValueError as exc:
                raise ValueError(
                    f"{part!r} is not an IP network such as 10.0.0.0/8: {exc}"
                ) from None
    return tuple(networks)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            shown = "***" if err["loc"][:1] in _SECRETS else _redacted(err.get("input"))
            problems.append(f"{name}={shown!r}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


def _redacted(value: object) -> object:
    """``value`` with the user and password of a URL (``scheme://user:secret@host``) hidden."""
    return _USERINFO.sub(r"\1***@", value) if isinstance(value, str) else value


#: Settings whose value an error message never shows.
_SECRETS = {("secret_key",)}

_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)
