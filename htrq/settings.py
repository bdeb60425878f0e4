"""Configuration from ``HTRQ_*`` environment variables, read once at start and passed in."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from htrq.resources import CTC_WEIGHT, REVIEW_BELOW

ENV_PREFIX = "HTRQ_"


class SettingsError(Exception):
    """A configuration value is wrong; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: SQLAlchemy URL of the database. Unset: ``htrq transcribe`` uses a throwaway SQLite file
    #: and the server commands refuse to start.
    database_url: str | None = None
    #: Celery broker URL (Redis). Unset: ``htrq transcribe`` uses an in-process queue.
    broker_url: str | None = None
    #: Directory of the blob store holding uploaded bytes.
    storage_dir: Path = Path("var/blobs")

    #: Recognition model: ``builtin`` (shipped in the repo), a local directory or a hub id.
    model: str = "builtin"
    #: Torch device: ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = "cpu"
    #: Weights dtype; half precision is for GPUs.
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    #: Line crops per ``generate()`` call.
    batch_size: int = Field(16, ge=1, le=1024)
    #: Beam width; 1 is greedy decoding.
    num_beams: int = Field(4, ge=1, le=32)
    #: Share of the CTC head's prefix score in decoding (joint CTC/attention decoding), for
    #: models that ship ``ctc_head.safetensors`` as the built-in one does; 0 turns it off.
    ctc_weight: float = Field(CTC_WEIGHT, ge=0, le=1)
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
    #: Resolution at which PDF pages are rendered.
    pdf_dpi: int = Field(300, ge=50, le=1200)
    #: Margin in pixels added around each line box before recognition.
    line_margin: int = Field(4, ge=0)
    #: Line segmenter for ``mode=page``: ``classical`` (OpenCV, no model), ``projection``
    #: (row profiles; unruled, level pages only) or ``kraken`` (neural baselines; needs the
    #: optional kraken package). bench/segmentation.md has the figures behind the default.
    segmenter: Literal["classical", "projection", "kraken"] = "classical"

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

    @field_validator("database_url", "broker_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

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


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{name}={err.get('input')!r}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
