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

from sqlalchemy.orm import Session, sessionmaker

from htrq.claims import Swept, sweep
from htrq.db import session_scope
from htrq.models import utcnow
from htrq.queue import CelerySender
from htrq.settings import Settings

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


class SweeperThread(threading.Thread):
    def __init__(
        self, *, sessions: sessionmaker[Session], sender: CelerySender, settings: Settings
    ) -> None:
        super().__init__(name="htrq-sweeper", daemon=True)
        self.sessions, self.sender, self.settings = sessions, sender, settings
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.sweep_interval):
            try:
                sweep_once(sessions=self.sessions, sender=self.sender, settings=self.settings)
            except Exception:
                # Database or broker down: try again next round.
                log.exception("sweeper: sweep failed")

    def stop(self) -> None:
        self.stopping.set()
