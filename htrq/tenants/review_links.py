"""Review links: a person reviews one job in the browser without an API key, until the link
expires or is revoked.

A DMS asks for a link with its key (``POST /v1/jobs/{id}/review-link``) and hands it to its
user; the link's token lets the review page, and the calls it makes, act on that one job.
A token is ``htrv_`` and 43 random URL-safe characters (256 bits), recorded as a row
(:class:`htrq.models.ReviewLink`) that keeps only its SHA-256, as API keys are kept: a
database backup opens nothing, and no server key signs links, so no other secret (a
tenant's webhook secret, which every receiver holds) can forge one.

Because each link is a row, it can end before its expiry:

- ``DELETE /v1/jobs/{id}/review-links`` revokes every link of a job;
- ``DELETE /v1/review-links`` (or ``htrq tenants revoke-links``) every link of a tenant;
- revoking the API key that asked for a link (``htrq keys revoke``) ends the link with it.

Where the token travels: in the link's fragment (``/review/{job}#t=<token>``), which a
browser never sends to a server, so it lands in no access log, proxy log or ``Referer``; the
review page reads it there and sends it in the ``X-Review-Token`` header with each call,
images included (fetched by script, not by ``<img src>``).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.jobs import owned_job
from htrq.models import ApiKey, Job, ReviewLink, utcnow
from htrq.settings import Settings
from htrq.tenants import hash_key

#: The header a review link's token travels in.
TOKEN_HEADER = "X-Review-Token"
#: Where the token stands in a link: its fragment, ``#t=<token>``.
TOKEN_FRAGMENT = "t"
TOKEN_PREFIX = "htrv_"
#: Longest lifetime a link may ask for.
MAX_LINK_SECONDS = 7 * 86400


class InvalidLink(Exception):
    """A review token that is malformed, unknown, revoked, for another job, or expired."""


def make_token(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str,
    api_key: str | None = None,
    seconds: int | None = None,
    now: datetime | None = None,
) -> tuple[str, datetime]:
    """A new link's token for the tenant's job, valid ``seconds`` (default
    ``review_link_seconds``) and for as long as ``api_key`` (the key that asks for it; None
    while ``HTRQ_AUTH=off``) is not revoked; returns it with its expiry. Raises ``NotFound``
    for a job that is not the tenant's."""
    lifetime = seconds or settings.review_link_seconds
    if not 0 < lifetime <= MAX_LINK_SECONDS:
        raise ValueError(f"a review link lasts 1 to {MAX_LINK_SECONDS} seconds")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = (now or utcnow()) + timedelta(seconds=lifetime)
    with session_scope(sessions) as s:
        job = owned_job(s, tenant_id, job_id)
        key_id = (
            s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(api_key))).first()
            if api_key is not None
            else None
        )
        s.add(
            ReviewLink(
                token_hash=hash_key(token),
                job_id=job.id,
                tenant_id=tenant_id,
                api_key_id=key_id,
                expires_at=expires,
            )
        )
    return token, expires.replace(microsecond=0)


def check_token(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    job_id: str,
    token: str,
    now: datetime | None = None,
) -> uuid.UUID:
    """The tenant a live token for ``job_id`` acts for; :class:`InvalidLink` otherwise.

    A token for another job, an unknown job, a revoked link and a made-up token are refused
    alike, so that a token tells nothing about jobs it was not made for; an expired one says
    so, since its holder can do nothing with it but ask for a new one.
    """
    invalid = InvalidLink("the review link is not valid (or was revoked); ask for a new one")
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        raise invalid
    try:
        jid = uuid.UUID(job_id)
    except ValueError:
        raise invalid from None
    with sessions() as s:
        row = s.execute(
            select(
                ReviewLink.tenant_id,
                ReviewLink.expires_at,
                ReviewLink.revoked_at,
                ApiKey.revoked_at.label("key_revoked_at"),
            )
            .join(Job, Job.id == ReviewLink.job_id)
            .outerjoin(ApiKey, ApiKey.id == ReviewLink.api_key_id)
            .where(ReviewLink.token_hash == hash_key(token), ReviewLink.job_id == jid)
        ).first()
    if row is None or row.revoked_at is not None or row.key_revoked_at is not None:
        raise invalid
    if row.expires_at <= (now or utcnow()):
        raise InvalidLink("the review link has expired; ask for a new one")
    tenant_id: uuid.UUID = row.tenant_id
    return tenant_id


def revoke_links(
    sessions: sessionmaker[Session],
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | str | None = None,
) -> int:
    """Revoke the tenant's live links (of one job, where given); returns how many. Raises
    ``NotFound`` for a job that is not the tenant's."""
    with session_scope(sessions) as s:
        which = [ReviewLink.tenant_id == tenant_id, ReviewLink.revoked_at.is_(None)]
        if job_id is not None:
            which.append(ReviewLink.job_id == owned_job(s, tenant_id, job_id).id)
        done = s.execute(update(ReviewLink).where(*which).values(revoked_at=utcnow()))
        return done.rowcount  # type: ignore[attr-defined,no-any-return]
