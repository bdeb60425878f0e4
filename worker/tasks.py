"""The Celery batch task: turns a group of messages into page ids and hands them on."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery, Task
from celery_batches import Batches, SimpleRequest

from htrq.queue import PROCESS_PAGE
from htrq.settings import Settings
from worker.batch import BatchContext, process_batch
from worker.metrics import record_batch

log = logging.getLogger(__name__)


def register_tasks(app: Celery, settings: Settings, context: Callable[[], BatchContext]) -> Task:
    """Register the page task on ``app``; ``context`` returns the process's loaded context."""

    @app.task(
        name=PROCESS_PAGE,
        base=Batches,
        flush_every=settings.flush_every,
        flush_interval=settings.flush_interval,
        # The group is acknowledged when the call returns; a worker that dies first leaves
        # the messages to be redelivered.
        acks_late=True,
        ignore_result=True,
    )
    def process_pages(requests: list[SimpleRequest]) -> None:
        # Task.retry does not work per request in a batch; batch.py re-sends pages instead.
        ids = [str(r.args[0]) if r.args else str(r.kwargs.get("page_id")) for r in requests]
        ctx = context()
        report = process_batch(ids, ctx)
        record_batch(report, model=ctx.model_name)
        log.info(
            "batch of %d: claimed %d, succeeded %d, failed %d, requeued %d, discarded %d "
            "(pipeline %d ms, writes %d ms)",
            report.received,
            report.claimed,
            report.succeeded,
            report.failed,
            report.requeued,
            report.discarded,
            report.pipeline_ms,
            report.write_ms,
        )

    return process_pages
