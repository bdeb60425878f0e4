"""Which queues a worker consumes, and where its re-sends go.

A worker serves the model it loads: its model's queue and, with fair share, that model's
queue of every tenant (``htrq.queue``). Tenants are made while workers run, so a thread looks
for new ones every ``HTRQ_QUEUE_REFRESH`` seconds and a consumer step adds their queues in
the consumer's own event loop (``Consumer.add_task_queue``, what Celery's ``add_consumer``
control command does), where the Redis transport's BRPOP picks them up on its next call.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from celery import bootsteps
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from htrq.models import Tenant
from htrq.queue import Send, worker_queues
from htrq.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between the consumer's looks at the latest set of queues (cheap: no I/O unless
#: a queue is new).
APPLY_EVERY = 1.0


def list_tenants(sessions: sessionmaker[Session]) -> list[uuid.UUID]:
    with sessions() as s:
        return list(s.scalars(select(Tenant.id)))


class QueueWatcher(threading.Thread):
    """Keeps ``wanted``, the queues this worker should consume, up to date from the tenants
    table (a thread, so that a slow database never stalls the consumer's event loop)."""

    def __init__(self, *, settings: Settings, tenants: Callable[[], Iterable[uuid.UUID]]) -> None:
        super().__init__(name="htrq-queues", daemon=True)
        self.settings, self.tenants = settings, tenants
        self.wanted: frozenset[str] = frozenset(worker_queues(settings))
        self.stopping = threading.Event()

    def refresh(self) -> None:
        self.wanted = frozenset(worker_queues(self.settings, self.tenants()))

    def run(self) -> None:
        while not self.stopping.wait(self.settings.queue_refresh):
            try:
                self.refresh()
            except Exception:
                log.warning("could not list tenants; their new queues wait for the next look")

    def stop(self) -> None:
        self.stopping.set()


def tenant_queues_step(watcher: QueueWatcher) -> type[bootsteps.StartStopStep]:
    """A consumer step that consumes every queue ``watcher`` wants, as it learns of them."""

    class TenantQueues(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.tref: Any = None

        def start(self, c: Any) -> None:
            if self.tref is not None:  # started again after a broker reconnection
                self.tref.cancel()
            try:
                watcher.refresh()  # consume every tenant's queue from the first message on
            except Exception:
                log.warning("could not list tenants at start; will look again")
            self.apply(c)
            self.tref = c.timer.call_repeatedly(APPLY_EVERY, self.apply, (c,), priority=10)

        def apply(self, c: Any) -> None:
            # Queues the consumer already holds (from --queues, or added before) are
            # consumed once its loop starts, or are already.
            present = {q.name for q in c.task_consumer.queues}
            for queue in sorted(watcher.wanted - present):
                c.add_task_queue(queue)

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

    return TenantQueues


class SendBack:
    """A batch's ``send``: each page goes back to the queue its message came from (its
    tenant's queue of this model), or to ``fallback`` for a page of unknown origin."""

    def __init__(self, send: Send, origin: Mapping[str, str], fallback: str) -> None:
        self.send, self.origin, self.fallback = send, origin, fallback

    def __call__(
        self, page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None
    ) -> None:
        if queue is not None:
            self.send(page_ids, countdown, queue=queue)
            return
        by_queue: dict[str, list[str]] = defaultdict(list)
        for page_id in page_ids:
            by_queue[self.origin.get(str(page_id), self.fallback)].append(str(page_id))
        for name, ids in by_queue.items():
            self.send(ids, countdown, queue=name)
