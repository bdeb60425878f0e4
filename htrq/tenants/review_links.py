"""Signed, expiring review links: a person reviews one job in the browser without an API key.

A DMS asks for a link with its key (``POST /v1/jobs/{id}/review-link``) and hands it to its
user; the link's token lets the review page, and the calls it makes, act on that one job
until the token expires. A token is ``<expiry>.<mac>``: the expiry in Unix seconds and an
HMAC-SHA256 over the job id, the job's tenant and the expiry. Nothing in it is secret; it
cannot be altered (another job, a later expiry) without the key.

The key: ``HTRQ_REVIEW_SECRET`` where it is set. Otherwise a key derived from the job's
tenant's webhook secret, which is 256 random bits made for that tenant (``htrq.tenants``),
kept in the database and known outside it only to that tenant's DMS, which holds an API key
that can do all a link can and more. So whoever could forge a link could act for the tenant
anyway, and one tenant's secret opens nothing of another's. The key is derived (an HMAC of
a fixed label), so that a link's MAC can never be taken for a webhook signature or the other
way round. Nothing is derived from anything public (the job id, a default value), which
would let anyone make links.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from htrq.jobs import owned_job
from htrq.models import Job, Tenant
from htrq.settings import Settings

#: Where a token may travel: the header for the page's API calls, the query parameter for
#: the page itself and its image (a browser sends no header with a link or an ``<img>``).
TOKEN_HEADER = "X-Review-Token"
TOKEN_QUERY = "t"
#: Longest lifetime a link may ask for.
MAX_LINK_SECONDS = 7 * 86400

_LABEL = b"htrq review link v1"
_MAC_CHARS = 43  # 32 bytes in unpadded base64url


class InvalidLink(Exception):
    """A review token that is malformed, altered, for another job, or expired."""


def make_token(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    seconds: int | None = None,
    now: float | None = None,
) -> tuple[str, datetime]:
    """A token for the tenant's job, valid ``seconds`` (default ``review_link_seconds``);
    returns it with its expiry. Raises ``NotFound`` for a job that is not the tenant's."""
    lifetime = seconds or settings.review_link_seconds
    if not 0 < lifetime <= MAX_LINK_SECONDS:
        raise ValueError(f"a review link lasts 1 to {MAX_LINK_SECONDS} seconds")
    with sessions() as s:
        job = owned_job(s, tenant_id, job_id)
        secret = s.scalars(select(Tenant.webhook_secret).where(Tenant.id == tenant_id)).one()
        jid = job.id
    expires = int(now if now is not None else time.time()) + lifetime
    mac = _mac(_key(settings, secret), jid, tenant_id, expires)
    return f"{expires}.{mac}", datetime.fromtimestamp(expires, UTC)


def check_token(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    job_id: str,
    token: str,
    now: float | None = None,
) -> uuid.UUID:
    """The tenant a valid token for ``job_id`` acts for; :class:`InvalidLink` otherwise.

    A token for another job, an unknown job and an altered token are refused alike, so that
    a link tells nothing about jobs it was not made for.
    """
    invalid = InvalidLink("the review link is not valid; ask for a new one")
    expiry, dot, mac = token.partition(".")
    if not dot or not expiry.isdigit() or len(expiry) > 12 or len(mac) != _MAC_CHARS:
        raise invalid
    try:
        jid = uuid.UUID(job_id)
    except ValueError:
        raise invalid from None
    with sessions() as s:
        row = s.execute(
            select(Job.tenant_id, Tenant.webhook_secret)
            .join(Tenant, Job.tenant_id == Tenant.id)
            .where(Job.id == jid)
        ).first()
    if row is None:
        raise invalid
    expected = _mac(_key(settings, row.webhook_secret), jid, row.tenant_id, int(expiry))
    if not hmac.compare_digest(expected, mac):
        raise invalid
    if int(expiry) <= (now if now is not None else time.time()):
        raise InvalidLink("the review link has expired; ask for a new one")
    tenant_id: uuid.UUID = row.tenant_id
    return tenant_id


def _key(settings: Settings, tenant_secret: str) -> bytes:
    secret = settings.review_secret or tenant_secret
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, job_id: uuid.UUID, tenant_id: uuid.UUID, expires: int) -> str:
    msg = f"{job_id}\n{tenant_id}\n{expires}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
