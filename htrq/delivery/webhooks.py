"""Completion webhooks: how events are signed, claimed and sent, and how a receiver verifies.

Events are written to the ``webhook_events`` outbox by :mod:`htrq.delivery.completion`, in the
transaction that finishes a job; each worker's :class:`Dispatcher` sends them. Each attempt
claims its event first (``FOR UPDATE SKIP LOCKED``, then pushed past the attempt's deadline),
so two workers never send the same event at once; an event is re-sent with capped, doubling
backoff until an answer in 2xx, or marked ``failed`` after ``HTRQ_WEBHOOK_MAX_ATTEMPTS``.
Delivery is at least once: a receiver drops repeats by the event's ``id``.

One receiver cannot hold the others' events: a dispatcher sends up to
``HTRQ_WEBHOOK_CONCURRENCY`` events at once, at most ``HTRQ_WEBHOOK_TENANT_CONCURRENCY`` of one
tenant's, and each attempt ends by its deadline (``HTRQ_WEBHOOK_TIMEOUT``) reading at most a
few KB of the answer (:mod:`htrq.delivery.sending`). Each attempt resolves the callback's
host, judges every address (:mod:`htrq.delivery.addresses`) and connects only to those.

Signature, as Stripe does it: ``Htrq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" under the tenant's secret>``. While a rotated secret's overlap lasts
(``htrq tenants rotate-secret``) the header carries one ``v1`` per secret, the new one first;
a receiver accepts the event if any of them matches its secret. It checks with a
constant-time compare and refuses timestamps too far from its clock.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import ScalarSelect, func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from htrq.delivery.addresses import CallbackPolicy, check_callback_url
from htrq.delivery.sending import ERRORS, Attempt, post
from htrq.errors import PageError
from htrq.models import Job, Tenant, TenantModel, WebhookEvent, utcnow
from htrq.resources import WebhookState
from htrq.settings import Settings
from htrq.tenants import signing_secrets
from htrq.tenants.secretbox import SecretBox

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Htrq-Signature"
#: Seconds a claim outlasts its attempt's deadline, for the database writes around it.
CLAIM_MARGIN = 30.0


def sign(secret: str | Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The ``Htrq-Signature`` header value for ``body``: one ``v1`` per secret."""
    t = int(time.time()) if timestamp is None else timestamp
    keys = [secret] if isinstance(secret, str) else list(secret)
    macs = [hmac.new(k.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest() for k in keys]
    return ",".join([f"t={t}", *(f"v1={m}" for m in macs)])


def verify(
    secret: str, body: bytes, header: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """What a receiver does: one of the ``v1`` signatures matches its secret, and the
    timestamp is within ``tolerance`` seconds of its clock (for tests, and as the reference
    the API guide's snippet follows, docs/api.md)."""
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [v for k, v in fields if k.strip() == "t"]
    try:
        (t,) = map(int, stamps)
    except ValueError:  # no timestamp, several, or not a number
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    # Every candidate is compared, so that the time taken says nothing about which matched.
    matched = [hmac.compare_digest(expected, v.strip()) for k, v in fields if k.strip() == "v1"]
    return any(matched)


def latest_event_id(job_id: Any) -> ScalarSelect[uuid.UUID]:
    """The id of the job's latest event, as a subquery (``job_id``: a value or a column)."""
    ev = aliased(WebhookEvent)  # not the outer query's events, which it may join
    return (
        select(ev.id).where(ev.job_id == job_id).order_by(ev.seq.desc()).limit(1).scalar_subquery()
    )


def webhook_state(ev: WebhookEvent | None) -> WebhookState | None:
    """How an event's delivery went, as the job resource shows it: the failure as a code and
    a fixed text, never what the receiver said."""
    if ev is None:
        return None
    code = ev.last_error if ev.last_error in ERRORS else ("failed" if ev.last_error else None)
    return WebhookState(
        event_id=ev.id,
        completion=ev.seq,
        # The column is a str; its CHECK constraint holds it to these three values.
        status=cast(Literal["pending", "delivered", "failed"], ev.status),
        attempts=ev.attempts,
        last_status=ev.last_status,
        # One of ERRORS' keys or "failed": the Literal's values, which mypy cannot see.
        last_error_code=code,  # type: ignore[arg-type]
        last_error=ERRORS[code] if code else None,
        next_attempt_at=ev.next_attempt_at if ev.status == "pending" else None,
        delivered_at=ev.delivered_at,
    )


@dataclass(frozen=True)
class DueEvent:
    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    payload: str
    attempts: int
    secrets: list[str]


class Dispatcher:
    """Sends due events from the outbox, several at once, in every worker's main process (any
    number of them may run: each event is claimed by one at a time).

    :meth:`dispatch` claims as many due events as there are free slots (leaving out tenants
    that already fill theirs) and starts them; it does not wait for them, so that the next
    call can start other tenants' events while a slow one is still held.
    """

    def __init__(
        self, *, sessions: sessionmaker[Session], settings: Settings, box: SecretBox
    ) -> None:
        self.sessions, self.settings, self.box = sessions, settings, box
        self.policy = CallbackPolicy.from_settings(settings)
        self.slots = settings.webhook_concurrency
        self.per_tenant = settings.webhook_tenant_concurrency
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="htrq-webhook")
        self._lock = threading.Lock()
        self._busy: Counter[uuid.UUID] = Counter()

    def dispatch(self) -> list[Future[bool]]:
        """Start the due events there is room for; each future says whether it was delivered."""
        with self._lock:
            busy = dict(self._busy)
        free = self.slots - sum(busy.values())
        if free <= 0:
            return []
        events = _claim_due(
            self.sessions,
            limit=free,
            per_tenant=self.per_tenant,
            busy=busy,
            skip={t for t, n in busy.items() if n >= self.per_tenant},
            hold=timedelta(seconds=self.settings.webhook_timeout + CLAIM_MARGIN),
            box=self.box,
        )
        started = []
        for ev in events:
            with self._lock:
                self._busy[ev.tenant_id] += 1
            started.append(self._pool.submit(self._run, ev))
        return started

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _run(self, ev: DueEvent) -> bool:
        try:
            return deliver_one(self.sessions, self.settings, self.policy, ev)
        except Exception:
            # The database went away mid-attempt: the claim expires and the event is sent
            # again, as after a worker's crash.
            log.exception("webhooks: event %s could not be recorded", ev.id)
            return False
        finally:
            with self._lock:
                self._busy[ev.tenant_id] -= 1
                if self._busy[ev.tenant_id] <= 0:
                    del self._busy[ev.tenant_id]


def deliver_due(sessions: sessionmaker[Session], settings: Settings, *, box: SecretBox) -> int:
    """Send the events that are due now, at most ``webhook_concurrency`` of them, and wait
    for them; return how many were delivered (for tests and one-off use)."""
    dispatcher = Dispatcher(sessions=sessions, settings=settings, box=box)
    try:
        return sum(f.result() for f in dispatcher.dispatch())
    finally:
        dispatcher.close()


def deliver_one(
    sessions: sessionmaker[Session], settings: Settings, policy: CallbackPolicy, ev: DueEvent
) -> bool:
    """One attempt at one claimed event, and its outcome recorded; True if delivered."""
    body = ev.payload.encode()
    try:
        # Resolved and judged at each attempt: what the host resolves to may have changed
        # since the job was submitted; the connection goes only to the addresses judged here.
        target = check_callback_url(ev.url, policy)
    except PageError as exc:
        attempt = Attempt(None, "not_allowed", 0, exc.message)
    else:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(ev.secrets, body)}
        attempt = post(ev.url, target, body, headers, seconds=settings.webhook_timeout)
    attempts = ev.attempts + 1
    if attempt.ok:
        values: dict[str, object] = {"status": "delivered", "delivered_at": utcnow()}
    elif attempts >= settings.webhook_max_attempts:
        values = {"status": "failed"}
    else:
        wait = min(settings.webhook_backoff_max, settings.webhook_backoff * 2 ** (attempts - 1))
        values = {"next_attempt_at": utcnow() + timedelta(seconds=wait)}
    if not attempt.ok:
        # The detail stays in the worker's log: the job resource shows only the code.
        log.warning(
            "webhook %s attempt %d: %s (HTTP %s) %s; %d bytes read",
            ev.id,
            attempts,
            attempt.error,
            attempt.status,
            attempt.detail,
            attempt.bytes_read,
        )
    with sessions.begin() as s:
        s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == ev.id)
            .values(
                attempts=attempts, last_status=attempt.status, last_error=attempt.error, **values
            )
        )
    return attempt.ok


def _claim_due(
    sessions: sessionmaker[Session],
    *,
    limit: int,
    per_tenant: int,
    busy: dict[uuid.UUID, int],
    skip: set[uuid.UUID],
    hold: timedelta,
    box: SecretBox,
) -> list[DueEvent]:
    """Up to ``limit`` due events, at most ``per_tenant`` of one tenant's (less those it has
    in flight, ``busy``), oldest first; each pushed ``hold`` into the future so that another
    dispatcher skips it meanwhile (and takes it up again if this one dies)."""
    now = utcnow()
    # Each tenant's due events ranked, so that one tenant's backlog cannot fill the batch.
    # An event is about a job or (model.ready / model.failed) a tenant model: its tenant is
    # that of whichever it has.
    tenant_id = func.coalesce(Job.tenant_id, TenantModel.tenant_id)
    ranked = (
        select(
            WebhookEvent.id,
            tenant_id.label("tenant_id"),
            WebhookEvent.next_attempt_at,
            func.row_number()
            .over(partition_by=tenant_id, order_by=WebhookEvent.next_attempt_at)
            .label("rank"),
        )
        .outerjoin(Job, WebhookEvent.job_id == Job.id)
        .outerjoin(TenantModel, WebhookEvent.model_id == TenantModel.id)
        .where(WebhookEvent.status == "pending", WebhookEvent.next_attempt_at <= now)
    )
    if skip:
        ranked = ranked.where(tenant_id.not_in(skip))
    ranked_q = ranked.subquery()
    with sessions.begin() as s:
        candidates = s.execute(
            select(ranked_q.c.id, ranked_q.c.tenant_id)
            .where(ranked_q.c.rank <= per_tenant)
            .order_by(ranked_q.c.next_attempt_at)
            .limit(limit * 2)
        ).all()
        room = {t: per_tenant - busy.get(t, 0) for _, t in candidates}
        chosen: list[uuid.UUID] = []
        for event_id, tenant in candidates:
            if room[tenant] > 0 and len(chosen) < limit:
                room[tenant] -= 1
                chosen.append(event_id)
        if not chosen:
            return []
        # Locked and checked again: another dispatcher may have claimed some meanwhile.
        rows = s.execute(
            select(
                WebhookEvent.id,
                WebhookEvent.url,
                WebhookEvent.payload,
                WebhookEvent.attempts,
                tenant_id.label("tenant_id"),
                Tenant.webhook_secret,
                Tenant.webhook_secret_previous,
                Tenant.webhook_secret_previous_until,
            )
            .outerjoin(Job, WebhookEvent.job_id == Job.id)
            .outerjoin(TenantModel, WebhookEvent.model_id == TenantModel.id)
            .join(Tenant, tenant_id == Tenant.id)
            .where(
                WebhookEvent.id.in_(chosen),
                WebhookEvent.status == "pending",
                WebhookEvent.next_attempt_at <= now,
            )
            .with_for_update(of=WebhookEvent, skip_locked=True)
        ).all()
        if not rows:
            return []
        s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_([r.id for r in rows]))
            .values(next_attempt_at=now + hold)
        )
    return [
        DueEvent(
            id=r.id,
            tenant_id=r.tenant_id,
            url=r.url,
            payload=r.payload,
            attempts=r.attempts,
            secrets=_secrets_of(r, box),
        )
        for r in rows
    ]


def _secrets_of(row: Any, box: SecretBox) -> list[str]:
    until: datetime | None = row.webhook_secret_previous_until
    return signing_secrets(row.webhook_secret, row.webhook_secret_previous, until, box=box)
