"""Take back pages from dead workers and re-send pages whose message was lost.

It runs as a thread in every worker's main process rather than under Celery beat: beat must
run exactly once per deployment (one more thing to deploy and keep alive), while the sweep's
UPDATEs match each row only in the state they expect, so any number of sweepers are safe and
the sweep lives as long as any worker does.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from htrq.claims import Swept, sweep
from htrq.db import session_scope
from htrq.deletion import purge_finished
from htrq.models import utcnow
from htrq.queue import CelerySender
from htrq.settings import Settings
from htrq.storage import BlobStore
from htrq.webhooks import deliver_due

log = logging.getLogger(__name__)


def sweep_once(
    *, sessions: sessionmaker[Session], sender: CelerySender, settings: Settings
) -> Swept:
    """One sweep: expired leases back to ``queued`` (or ``failed``), lost messages re-sent.

    A page may wait in a deep queue for hours, so ``queued`` for long is only taken as a lost
    message while the broker queue is empty.
    """
    now = utcnow()
    try:
        idle = sender.queue_depth() == 0
    except Exception:
        log.warning("sweeper: broker unreachable, skipping lost-message check")
        idle = False
    cutoff = now - timedelta(seconds=settings.queued_grace_seconds) if idle else None
    with session_scope(sessions) as s:
        swept = sweep(s, now=now, resend_older_than=cutoff)
    to_send = [str(i) for i in swept.requeued + swept.resend]
    if to_send:
        sender(to_send)
    if to_send or swept.failed:
        log.warning(
            "sweeper: %d expired leases re-queued, %d failed, %d lost messages re-sent",
            len(swept.requeued),
            len(swept.failed),
            len(swept.resend),
        )
    return swept


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
    number of them may run: each event is claimed by one at a time)."""

    def __init__(self, *, sessions: sessionmaker[Session], settings: Settings) -> None:
        super().__init__(name="htrq-webhooks", daemon=True)
        self.sessions, self.settings = sessions, settings
        self.stopping = threading.Event()

    def run(self) -> None:
        s = self.settings
        # No redirects: a public URL that redirects inward would get past the address check.
        with httpx.Client(timeout=s.webhook_timeout, follow_redirects=False) as client:
            while not self.stopping.wait(s.webhook_poll):
                try:
                    deliver_due(
                        self.sessions,
                        client,
                        backoff=s.webhook_backoff,
                        backoff_max=s.webhook_backoff_max,
                        max_attempts=s.webhook_max_attempts,
                        allow_private=s.webhook_allow_private,
                    )
                except Exception:
                    log.exception("webhooks: delivery round failed")

    def stop(self) -> None:
        self.stopping.set()
