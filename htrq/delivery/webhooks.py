"""Completion webhooks: which callback URLs are allowed, how events are signed and sent.

Events are written to the ``webhook_events`` outbox by :mod:`htrq.delivery.completion`, in the
transaction that finishes a job; the workers' dispatcher (:func:`deliver_due`) sends them.
Each attempt claims the event for a short while first (``FOR UPDATE SKIP LOCKED``), so two
workers never send the same event at once; an event is re-sent with capped, doubling backoff
until an answer in 2xx, or marked ``failed`` after ``HTRQ_WEBHOOK_MAX_ATTEMPTS``. Delivery is
at least once: a receiver drops repeats by the event's ``id``.

Signature, as Stripe does it: ``Htrq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" under the tenant's secret>``. A receiver checks the HMAC with a constant-time
compare and refuses timestamps too far from its clock.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
import uuid
from datetime import timedelta
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httpx
from sqlalchemy import ScalarSelect, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from htrq.errors import PageError
from htrq.models import Job, Tenant, WebhookEvent, utcnow
from htrq.resources import WebhookState

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Htrq-Signature"


def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Refuse (422) a callback URL that is not http(s), or whose host resolves to a loopback,
    private, link-local or otherwise internal address, unless ``allow_private``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise PageError("invalid_callback_url", "callback_url must be an http(s) URL with a host")
    if allow_private:
        return
    for address in _addresses(parts.hostname, parts.port or 443):
        if not address.is_global or address.is_multicast:
            raise PageError(
                "callback_not_allowed",
                f"callback_url resolves to an internal address ({address}); webhooks go only "
                "to public hosts unless the operator sets HTRQ_WEBHOOK_ALLOW_PRIVATE=true",
            )


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise PageError(
            "invalid_callback_url", f"callback_url host {host!r} does not resolve"
        ) from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Htrq-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance: float = 300) -> bool:
    """What a receiver does: the HMAC matches and the timestamp is recent (for tests, and as
    the reference the API guide's snippet follows, docs/api.md)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - t) <= tolerance
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


def latest_event_id(job_id: Any) -> ScalarSelect[uuid.UUID]:
    """The id of the job's latest event, as a subquery (``job_id``: a value or a column)."""
    ev = aliased(WebhookEvent)  # not the outer query's events, which it may join
    return (
        select(ev.id).where(ev.job_id == job_id).order_by(ev.seq.desc()).limit(1).scalar_subquery()
    )


def webhook_state(ev: WebhookEvent | None) -> WebhookState | None:
    """How an event's delivery went, as the job resource shows it."""
    if ev is None:
        return None
    return WebhookState(
        event_id=ev.id,
        completion=ev.seq,
        # The column is a str; its CHECK constraint holds it to these three values.
        status=cast(Literal["pending", "delivered", "failed"], ev.status),
        attempts=ev.attempts,
        last_status=ev.last_status,
        last_error=ev.last_error,
        next_attempt_at=ev.next_attempt_at if ev.status == "pending" else None,
        delivered_at=ev.delivered_at,
    )


def deliver_due(
    sessions: sessionmaker[Session],
    client: httpx.Client,
    *,
    backoff: float,
    backoff_max: float,
    max_attempts: int,
    allow_private: bool,
    batch: int = 20,
) -> int:
    """Send the events that are due; return how many were delivered."""
    delivered = 0
    for ev_id, url, payload, secret, attempts in _claim_due(
        sessions, batch, timeout=client.timeout
    ):
        body = payload.encode()
        status, error = None, None
        try:
            check_callback_url(url, allow_private=allow_private)  # it may resolve elsewhere now
            r = client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)},
            )
            status = r.status_code
            ok = 200 <= status < 300
            if not ok:
                error = f"HTTP {status}"
        except (httpx.HTTPError, PageError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"[:500]
        attempts += 1
        with sessions.begin() as s:
            if ok:
                values: dict[str, object] = {"status": "delivered", "delivered_at": utcnow()}
                delivered += 1
            elif attempts >= max_attempts:
                values = {"status": "failed"}
                log.warning("webhook %s to %s failed %d times: %s", ev_id, url, attempts, error)
            else:
                wait = min(backoff_max, backoff * 2 ** (attempts - 1))
                values = {"next_attempt_at": utcnow() + timedelta(seconds=wait)}
            s.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == ev_id)
                .values(attempts=attempts, last_status=status, last_error=error, **values)
            )
    return delivered


def _claim_due(
    sessions: sessionmaker[Session], batch: int, timeout: httpx.Timeout
) -> list[tuple[uuid.UUID, str, str, str, int]]:
    """Due events, each pushed into the future for as long as one attempt can take, so that
    another dispatcher skips it meanwhile (and takes it up again if this one dies)."""
    hold = timedelta(seconds=2 * (timeout.read or 10) + 5)
    with sessions.begin() as s:
        rows = s.execute(
            select(WebhookEvent.id, WebhookEvent.url, WebhookEvent.payload, WebhookEvent.attempts)
            .where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at <= utcnow())
            .order_by(WebhookEvent.next_attempt_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return []
        s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_([r.id for r in rows]))
            .values(next_attempt_at=utcnow() + hold)
        )
        secrets = dict(
            s.execute(
                select(WebhookEvent.id, Tenant.webhook_secret)
                .join(Job, WebhookEvent.job_id == Job.id)
                .join(Tenant, Job.tenant_id == Tenant.id)
                .where(WebhookEvent.id.in_([r.id for r in rows]))
            ).all()
        )
    return [(r.id, r.url, r.payload, secrets[r.id], r.attempts) for r in rows]
