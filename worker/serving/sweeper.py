"""Take back pages from dead workers and re-send pages whose message was lost.

It runs as a thread in every worker's main process rather than under Celery beat: beat must
run exactly once per deployment (one more thing to deploy and keep alive), while the sweep's
UPDATEs match each row only in the state they expect, so any number of sweepers are safe and
the sweep lives as long as any worker does.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from htrq.db import session_scope
from htrq.delivery.webhooks import Dispatcher
from htrq.jobs.claims import Route, Swept, routes_of, stale_routes, sweep
from htrq.jobs.deletion import purge_finished
from htrq.models import utcnow
from htrq.queue import LEGACY_QUEUE, CelerySender, page_queue
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.tenants.secretbox import SecretBox

log = logging.getLogger(__name__)


def sweep_once(
    *, sessions: sessionmaker[Session], sender: CelerySender, settings: Settings
) -> Swept:
    """One sweep: expired leases back to ``queued`` (or ``failed``), lost messages re-sent,
    each page to its tenant's queue of its job's model.

    A page may wait in a deep queue for hours, so ``queued`` for long is only taken as a lost
    message while its own queue (and the legacy one) is empty: one tenant's backlog does not
    keep another tenant's lost page from being re-sent.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.queued_grace_seconds)
    with session_scope(sessions) as s:
        idle = _idle_routes(s, sender=sender, settings=settings, older_than=cutoff)
        swept = sweep(s, now=now, resend_older_than=cutoff, resend_routes=idle)
        to_send = swept.requeued + swept.resend
        routes = routes_of(s, to_send)
    by_queue: dict[str, list[str]] = defaultdict(list)
    for page_id in to_send:
        tenant_id, model = routes[page_id]
        by_queue[page_queue(settings, model=model, tenant_id=tenant_id)].append(str(page_id))
    for queue, ids in by_queue.items():
        sender(ids, queue=queue)
    if to_send or swept.failed:
        log.warning(
            "sweeper: %d expired leases re-queued, %d failed, %d lost messages re-sent",
            len(swept.requeued),
            len(swept.failed),
            len(swept.resend),
        )
    return swept


def _idle_routes(
    s: Session, *, sender: CelerySender, settings: Settings, older_than: datetime
) -> list[Route]:
    """The routes of long-queued pages whose queue holds no message (none when the broker
    cannot be reached: a message may be waiting there)."""
    stale = stale_routes(s, older_than=older_than)
    if not stale:
        return []
    try:
        if sender.queue_depth([LEGACY_QUEUE]):
            return []  # pages sent before the per-model queues may still wait there
        return [
            (tenant_id, model)
            for tenant_id, model in stale
            if sender.queue_depth([page_queue(settings, model=model, tenant_id=tenant_id)]) == 0
        ]
    except Exception:
        log.warning("sweeper: broker unreachable, skipping lost-message check")
        return []


def purge_expired(
    *, sessions: sessionmaker[Session], storage: BlobStore, settings: Settings
) -> int:
    """Delete the jobs that finished more than ``HTRQ_RETENTION_DAYS`` ago (none if unset)."""
    if settings.retention_days is None:
        return 0
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    return len(purge_finished(sessions=sessions, storage=storage, finished_before=cutoff))


class SweeperThread(threading.Thread):
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        sender: CelerySender,
        settings: Settings,
        storage: BlobStore,
    ) -> None:
        super().__init__(name="htrq-sweeper", daemon=True)
        self.sessions, self.sender, self.settings = sessions, sender, settings
        self.storage = storage
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.sweep_interval):
            try:
                sweep_once(sessions=self.sessions, sender=self.sender, settings=self.settings)
                purge_expired(sessions=self.sessions, storage=self.storage, settings=self.settings)
            except Exception:
                # Database or broker down: try again next round.
                log.exception("sweeper: sweep failed")

    def stop(self) -> None:
        self.stopping.set()


class WebhookThread(threading.Thread):
    """Sends due completion events from the outbox, in every worker's main process (any
    number of them may run: each event is claimed by one at a time), several at once
    (:class:`htrq.delivery.webhooks.Dispatcher`)."""

    def __init__(self, *, sessions: sessionmaker[Session], settings: Settings) -> None:
        super().__init__(name="htrq-webhooks", daemon=True)
        self.sessions, self.settings = sessions, settings
        self.stopping = threading.Event()

    def run(self) -> None:
        dispatcher = Dispatcher(
            sessions=self.sessions,
            settings=self.settings,
            box=SecretBox.of(self.settings.secret_key),
        )
        try:
            while not self.stopping.wait(self.settings.webhook_poll):
                try:
                    dispatcher.dispatch()
                except Exception:
                    log.exception("webhooks: delivery round failed")
        finally:
            dispatcher.close(wait=False)

    def stop(self) -> None:
        self.stopping.set()
