"""The job and page resources, as the API answers them and ``htrq status/transcribe`` print them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, computed_field, model_validator

JobStatus = Literal["queued", "running", "succeeded", "failed", "partial"]
PageStatus = Literal["queued", "running", "succeeded", "failed"]


class ErrorInfo(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str


class PageSummary(BaseModel):
    id: uuid.UUID
    index: int
    status: PageStatus


class StatusCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class WebhookState(BaseModel):
    """The latest completion event of a job and how its delivery went."""

    event_id: uuid.UUID
    completion: int = Field(description="1 for the job's first completion, 2 after a retry, ...")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None = Field(description="HTTP status of the last attempt")
    last_error_code: (
        Literal[
            "http_status",
            "timeout",
            "unreachable",
            "tls_failed",
            "bad_answer",
            "not_allowed",
            "failed",
        ]
        | None
    ) = Field(
        None,
        description="why the last attempt failed: `http_status` (answered outside 2xx, see "
        "`last_status`), `timeout`, `unreachable`, `tls_failed`, `bad_answer`, `not_allowed` "
        "(the URL now resolves to an address webhooks may not reach); null after a success",
    )
    last_error: str | None = Field(description="a fixed text for `last_error_code`")
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class JobSummary(BaseModel):
    """A job in a list: its state and counts, without its pages."""

    id: uuid.UUID
    status: JobStatus
    external_id: str | None
    mode: str
    model: str | None = Field(
        None, description="the model the job asked for (null: the default, for older jobs)"
    )
    language: str | None = Field(
        None,
        description="the language whose lexicon steers the reading (`none`: the glyphs "
        "alone; null for older jobs, read without one)",
    )
    reuse: bool = Field(
        True,
        description="whether its pages may take the reading of an identical page the tenant "
        "already had read (false: each page read afresh)",
    )
    created_at: datetime
    finished_at: datetime | None = Field(
        description="when its last page finished; null while any is queued or running"
    )
    counts: StatusCounts


class JobResource(JobSummary):
    callback_url: str | None = None
    webhook: WebhookState | None = Field(
        None, description="the latest completion webhook, where the job has a callback_url"
    )
    pages: list[PageSummary]


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


#: Default of ``HTRQ_REVIEW_BELOW``: lines with a confidence below it are flagged
#: ``needs_review``. Chosen for the built-in model on 400 real lines of writers held out of its
#: training (``htrq eval --review-sweep``, beam 4, the service's default; see its model card):
#: half of those lines fall below 0.75, every one of them holds an error, and the half above
#: reads at CER 0.18 against 0.29 for all. At 0.9, 94% were flagged: a flag on nearly every
#: line tells an archivist nothing. On clean modern hands (held-out fonts) it flags few lines.
REVIEW_BELOW = 0.75

#: Default of ``HTRQ_CTC_WEIGHT``: the share of the CTC head's prefix score in each decoding
#: step, for models that ship a head (``worker.recognition.ctc_prefix``). Chosen on the built-in
#: model's validation lines (600, held-out fonts, greedy): CER 0.0658 at 0 (the decoder alone),
#: 0.0633 at 0.2, 0.0637 at 0.3, 0.0618 at 0.4, 0.0631 at 0.5 and 0.6.
CTC_WEIGHT = 0.4


#: An (x, y) point in page pixels, and a box (x0, y0, x1, y1). Lists of fixed length rather
#: than tuples: pydantic writes a tuple as ``prefixItems``, which Schemathesis's OpenAPI 3.1
#: check of the PATCH answer read as an invalid schema. The JSON is the same.
Point = Annotated[list[int], Field(min_length=2, max_length=2)]
Box = Annotated[list[int], Field(min_length=4, max_length=4)]


class WordResource(BaseModel):
    text: str
    box: Box = Field(description="x0, y0, x1, y1 in page pixels, within the line's box")
    confidence: float = Field(
        ge=0, le=1, description="the model's confidence in the word (1: a person wrote it)"
    )
    needs_review: bool = Field(
        False,
        description="the word's confidence is below HTRQ_REVIEW_BELOW in a line that needs "
        "review: where in the line a person should look",
    )


class LineResource(BaseModel):
    index: int
    text: str = Field(
        description="what the line says: a person's correction where there is one, else the "
        "model's reading"
    )
    model_text: str = Field(description="the model's reading, kept when a person corrects it")
    confidence: float = Field(ge=0, le=1, description="the model's confidence in model_text")
    bbox: Box = Field(description="x0, y0, x1, y1 in page pixels")
    polygon: list[Point] | None = Field(
        None, description="the line's outline in page pixels, where the segmenter gives one"
    )
    baseline: list[Point] | None = Field(
        None, description="the line's baseline in page pixels, where the segmenter gives one"
    )

    needs_review: bool = Field(
        description="the confidence is below HTRQ_REVIEW_BELOW and no person has corrected or "
        "reviewed the line yet: a person should check it"
    )
    words: list[WordResource] = Field(
        default_factory=list,
        description="the words of `text` in reading order; joined by single spaces they give "
        "`text`",
    )
    box_source: Literal["ctc", "estimate"] = Field(
        "estimate",
        description="ctc: word boxes from the model's alignment of its reading to the line "
        "image (re-fitted to a person's correction); estimate: the line's box split by "
        "character counts (a model without a CTC head, or a line read before words were)",
    )
    corrected: bool = Field(False, description="a person corrected the model's reading")
    reviewed: bool = Field(
        False, description="a person checked the line (corrected it, or confirmed its reading)"
    )
    corrected_at: datetime | None = None
    reviewed_at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_text_defaults_to_text(cls, data: Any) -> Any:
        # A line nobody corrected reads as the model read it (and so does a line resource
        # written before corrections existed).
        if isinstance(data, dict) and data.get("model_text") is None and "text" in data:
            data = {**data, "model_text": data["text"]}
        return data


class Provenance(BaseModel):
    model: str | None
    model_sha256: str | None = Field(description="SHA-256 of the model's weight files")
    model_id: uuid.UUID | None = Field(
        None, description="the id of your own model that read it (`/v1/models`), if one did"
    )
    decoding: dict[str, Any] | None = Field(
        description="the reading settings: num_beams, ctc_weight, dtype, device, "
        "max_new_tokens, batch_size, quantize, stretches, segmenter, line_margin, pdf_dpi, "
        "language, word_weight"
    )
    htrq_version: str | None


class ReusedFrom(BaseModel):
    """The page whose reading was copied into this one (it may have been deleted since)."""

    job_id: uuid.UUID
    page: int = Field(description="the page's index in that job")


class PageResource(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID
    index: int
    status: PageStatus
    filename: str | None
    frame: int
    width: int | None = Field(description="page image width in pixels, once read")
    height: int | None = Field(description="page image height in pixels, once read")
    text: str | None = Field(description="the lines' text, corrected where a person corrected it")
    confidence: float | None = Field(ge=0, le=1)
    lines: list[LineResource]
    error: ErrorInfo | None
    attempts: int
    model: str | None
    provenance: Provenance | None = Field(
        None, description="what read the page: model, weights digest, decoding, htrq version"
    )
    reused_from: ReusedFrom | None = Field(
        None,
        description="the tenant's earlier page with the same file, frame, model and reading "
        "settings whose reading this page took instead of being read again (its machine "
        "reading, not a person's corrections); null: read for itself",
    )
    started_at: datetime | None
    finished_at: datetime | None

    # mypy allows no decorator above @property; pydantic's documentation ignores it the same way.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def lines_to_review(self) -> int:
        """How many of the page's lines say ``needs_review``: where a person should look first
        (a line a person corrected or reviewed no longer counts)."""
        return sum(ln.needs_review for ln in self.lines)


def job_status(counts: StatusCounts, *, started: bool) -> JobStatus:
    """Derive a job's status from its pages' states.

    ``started``: a worker has claimed at least one of its pages. Pages that failed at submit
    (an unreadable upload) finish a page but do not start the job: it stays ``queued`` until
    a worker picks up the rest.
    """
    total = counts.queued + counts.running + counts.succeeded + counts.failed
    finished = counts.succeeded + counts.failed
    if total and finished == total:
        if counts.failed == 0:
            return "succeeded"
        return "failed" if counts.succeeded == 0 else "partial"
    return "running" if started else "queued"


ModelStatus = Literal["queued", "training", "ready", "failed", "cancelled"]


class ModelProgress(BaseModel):
    step: int = Field(description="training steps done (the last checkpoint's after a resume)")
    steps: int


class ModelRecipe(BaseModel):
    steps: int
    batch_size: int
    lr: float
    warmup: int
    augment: float = Field(description="strength of the scan augmentation of training lines")
    seed: int


class ModelResource(BaseModel):
    """A tenant's own model, trained on its corrected and confirmed lines."""

    id: uuid.UUID
    name: str = Field(description="what a job names in its `model` field to be read by it")
    base: str = Field(description="`builtin` or the id of the tenant's model it starts from")
    base_sha256: str | None = Field(description="SHA-256 of the base's weights")
    status: ModelStatus
    progress: ModelProgress
    train_lines: int | None = Field(description="corrected or confirmed lines it trained on")
    heldout_lines: int | None = Field(
        description="lines of whole jobs held out of training, on which both CERs are measured"
    )
    heldout_jobs: int | None
    base_cer: float | None = Field(description="the base's CER on the held-out lines")
    cer: float | None = Field(description="the new model's CER on the held-out lines")
    better_than_base: bool | None = Field(description="cer < base_cer (null until measured)")
    recipe: ModelRecipe
    lines_since: datetime | None
    callback_url: str | None
    model_sha256: str | None = Field(description="SHA-256 of its weights, once ready")
    error: ErrorInfo | None
    attempts: int = Field(description="trainings started (a resumed one counts again)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelList(BaseModel):
    models: list[ModelResource]
