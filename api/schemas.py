"""Request and response bodies of the HTTP API (the job and page resources live in htrq)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from htrq.resources import ErrorInfo, JobList, JobResource, LineResource, PageResource
from htrq.tenants.review_links import MAX_LINK_SECONDS
from htrq.text import MAX_LINE_CHARS, clean_correction

__all__ = [
    "ErrorBody",
    "JobList",
    "JobResource",
    "LineCorrection",
    "LineResource",
    "PageResource",
    "ReadyBody",
    "RetryBody",
    "ReviewLink",
    "ReviewLinkRequest",
]


class ErrorBody(BaseModel):
    """Every error answer: a stable code to branch on and a message for people."""

    error: ErrorInfo


class RetryBody(BaseModel):
    job_id: str
    requeued: int  #: failed pages put back in the queue


class ReadyBody(BaseModel):
    database: bool
    broker: bool


class LineCorrection(BaseModel):
    """A person's judgement of one line: its reading (``text``), or ``reviewed`` alone."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        None,
        max_length=MAX_LINE_CHARS,
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
