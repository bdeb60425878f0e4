"""Request and response bodies of the HTTP API (the job and page resources live in htrq)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from htrq.resources import ErrorInfo, JobList, JobResource, LineResource, PageResource
from htrq.tenants.review_links import MAX_LINK_SECONDS
from htrq.text import MAX_LINE_CHARS, MODEL_NAME, clean_correction

__all__ = [
    "LIMITED",
    "NO_NUL",
    "SUBMIT_BODY",
    "ErrorBody",
    "IsoDatetime",
    "JobList",
    "JobResource",
    "LineCorrection",
    "LineResource",
    "ModelRequest",
    "PageResource",
    "ReadyBody",
    "RetryBody",
    "ReviewLink",
    "ReviewLinkRequest",
    "SubmitFields",
    "submit_fields",
]


#: Text that PostgreSQL stores: anything but NUL, which a text column refuses (a 500 if it
#: reached the database; a 422 here).
NO_NUL = r"^[^\x00]*$"

_NUMBER = re.compile(r"\s*[+-]?\d+(\.\d*)?\s*")


def _date_not_number(value: object) -> object:
    """Pydantic reads a bare number as Unix seconds; the API's times are ISO 8601 only, so
    that ``created_after=1700000000`` is an error the client sees, not a date it did not mean."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-12-07T10:00:00Z")
    return value


#: A query parameter holding a date and time, written out (ISO 8601), never a number.
IsoDatetime = Annotated[datetime, BeforeValidator(_date_not_number)]


class ErrorBody(BaseModel):
    """Every error answer: a stable code to branch on and a message for people."""

    error: ErrorInfo


#: The 429 answer of a route that counts against the tenant's limits.
LIMITED: dict[str, Any] = {
    "model": ErrorBody,
    "description": "over the tenant's limit: `rate_limited` (requests per second) or "
    "`too_many_concurrent` (submissions, exports and page images at once); nothing was "
    "done: send it again after `Retry-After` seconds",
    "headers": {
        "Retry-After": {
            "description": "seconds to wait before sending it again",
            "schema": {"type": "integer"},
        }
    },
}


class SubmitFields(BaseModel):
    """The text fields of a submit (``POST /v1/jobs``, multipart/form-data)."""

    model_config = ConfigDict(extra="ignore")

    external_id: str | None = Field(
        None,
        max_length=255,
        pattern=NO_NUL,
        description="the DMS's own id of the document; without an Idempotency-Key header, a "
        "repeat with the same external_id answers the first job",
    )
    mode: Literal["page", "line"] = Field(
        "page", description="page: find the lines; line: each file is one line"
    )
    callback_url: str | None = Field(
        None,
        max_length=2000,
        pattern=NO_NUL,
        description="where to POST a signed event when the job finishes (and again each "
        "time a retry finishes it)",
    )
    model: str | None = Field(
        None,
        max_length=255,
        description="the model to read the pages with, one of the server's HTRQ_MODELS (422 "
        "unknown_model otherwise); default: the server's default model",
    )
    language: str | None = Field(
        None,
        max_length=16,
        description="the language of the pages (`en`, `fr`, … one of the server's "
        "HTRQ_LANGUAGES, 422 unknown_language otherwise): its lexicon steers the reading "
        "towards its words, leaving names, numbers and old spellings as read; `none` reads "
        "by the glyphs alone; default: the server's HTRQ_LANGUAGE",
    )
    reuse: bool = Field(
        True,
        description="false: read every page afresh. By default a page this tenant already had "
        "read (same bytes and frame, model and reading settings) takes that reading, and "
        "says `reused_from`",
    )


#: Fields where an empty value (an HTML form's empty input) means "not given".
_EMPTY_IS_UNSET = ("external_id", "callback_url", "model", "language", "reuse")


def submit_fields(fields: dict[str, str]) -> SubmitFields:
    """The submit's fields, checked as the OpenAPI document says; 422 ``invalid_request``."""
    given = {k: v for k, v in fields.items() if not (k in _EMPTY_IS_UNSET and v == "")}
    try:
        return SubmitFields.model_validate(given)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _submit_body() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "description": "one or more page images, PDFs or TIFFs",
        }
    }
    for name, prop in SubmitFields.model_json_schema()["properties"].items():
        # A form field is text or absent, never null: `str | None` is a string that may be
        # left out.
        variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        properties[name] = {**(variants[0] if variants else {}), **prop}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "SubmitBody",
                    "properties": properties,
                    "required": ["files"],
                }
            }
        },
    }


#: The submit's request body in the OpenAPI document (the route reads it itself).
SUBMIT_BODY = _submit_body()


class RetryBody(BaseModel):
    job_id: str
    requeued: int = Field(description="failed pages put back in the queue")
    reason: str | None = Field(
        None,
        description="when none was put back, why: no page failed, or every failed page "
        "failed for its input (the codes, with counts), which a retry cannot change",
    )


class ModelRequest(BaseModel):
    """``POST /v1/models``: what to train."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=f"^{MODEL_NAME}$",
        description="what jobs name to be read by it (letters, digits, '_', '-', '.')",
        examples=["parish-registers"],
    )
    base: str = Field(
        "builtin",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="`builtin`, or the name or id of one of your ready models to go on from",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="training steps (default: HTRQ_TRAIN_STEPS, "
        "or HTRQ_TRAIN_EPOCHS passes over the lines)",
        examples=[400],
    )
    lines_since: datetime | None = Field(
        None, description="train only on lines corrected or confirmed at or after this time"
    )
    callback_url: str | None = Field(
        None,
        max_length=2048,
        pattern=NO_NUL,
        description="where the signed `model.ready` / `model.failed` event is POSTed",
    )


class ReadyBody(BaseModel):
    database: bool
    broker: bool


class LineCorrection(BaseModel):
    """A person's judgement of one line: its reading (``text``), or ``reviewed`` alone;
    neither changes nothing."""

    model_config = ConfigDict(
        extra="forbid",
        # Said in the schema, as the server refuses it: a correction is a review, so text
        # with reviewed=false contradicts itself.
        json_schema_extra={
            "not": {
                "required": ["text", "reviewed"],
                "properties": {"text": {"type": "string"}, "reviewed": {"const": False}},
            }
        },
    )

    text: str | None = Field(
        None,
        max_length=MAX_LINE_CHARS,
        # The line breaks htrq.text.clean_correction refuses: a correction is one line.
        pattern="^[^\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]*$",
        description="what the line reads: one line, no line breaks; control characters are "
        "removed. The model's own reading takes back an earlier correction",
        examples=["Dear Mrs. Stanford,"],
    )
    reviewed: bool | None = Field(
        None,
        description="true: the line reads right as it is; false: take back a correction "
        "and the review mark",
    )

    @field_validator("text")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        return clean_correction(v) if v is not None else None


class ReviewLinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: int | None = Field(
        None,
        ge=60,
        le=MAX_LINK_SECONDS,
        description="seconds the link stays valid (default HTRQ_REVIEW_LINK_SECONDS)",
    )


class ReviewLink(BaseModel):
    url: str = Field(
        description="the review page of the job, for a person's browser; its token is in the "
        "fragment (`#t=...`), which browsers never send to a server"
    )
    expires_at: datetime


class ReviewLinksRevoked(BaseModel):
    revoked: int = Field(description="how many live links were revoked")
