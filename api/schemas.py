"""Request and response bodies of the HTTP API (the job and page resources live in htrq)."""

from __future__ import annotations

from pydantic import BaseModel

from htrq.resources import ErrorInfo, JobList, JobResource, PageResource

__all__ = ["ErrorBody", "JobList", "JobResource", "PageResource", "ReadyBody", "RetryBody"]


class ErrorBody(BaseModel):
    """Every error answer: a stable code to branch on and a message for people."""

    error: ErrorInfo


class RetryBody(BaseModel):
    job_id: str
    requeued: int  #: failed pages put back in the queue


class ReadyBody(BaseModel):
    database: bool
    broker: bool
