"""The Celery batch task: turns a group of messages into page ids and hands them on."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, bootsteps
from celery_batches import Batches, SimpleRequest
from kombu.asynchronous.timer import Timer

from htrq.queue import PROCESS_PAGE, model_queue
from htrq.settings import Settings
from worker.serving.batch import BatchContext, process_batch
from worker.serving.queues import SendBack
from worker.serving.worker_metrics import record_batch

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
        # A page re-sent after a transient error goes back to the queue it came from (its
        # tenant's queue), whose name is the message's routing key.
        origin = {i: _queue_of(r) for i, r in zip(ids, requests, strict=True)}
        ctx = context()
        fallback = model_queue(settings.model)
        back = SendBack(ctx.send, {i: q for i, q in origin.items() if q}, fallback)
        report = process_batch(ids, dataclasses.replace(ctx, send=back))
        record_batch(report, model=ctx.model_name)
        log.info(
            "batch of %d: claimed %d, succeeded %d, failed %d, requeued %d, discarded %d; "
            "read %d, reused %d, waiting %d (pipeline %d ms, writes %d ms)",
            report.received,
            report.claimed,
            report.succeeded,
            report.failed,
            report.requeued,
            report.discarded,
            report.read,
            report.reused,
            report.waiting,
            report.pipeline_ms,
            report.write_ms,
        )

    return process_pages


def _queue_of(request: SimpleRequest) -> str | None:
    info = request.delivery_info or {}
    key = info.get("routing_key")
    return str(key) if key else None


class RestartFlushTimers(bootsteps.StartStopStep):
    """Restart the batch tasks' flush timers each time the consumer (re)connects.

    celery-batches starts a repeating timer with the first message of a group and keeps its
    handle until the buffer is empty. When the broker connection is lost, Celery clears the
    event loop's timers (``celery.worker.loops.asynloop``) but celery-batches still holds the
    handle, so it never starts the timer again: a partial group (fewer than
    ``HTRQ_FLUSH_EVERY`` pages) then waits in the worker until enough other messages arrive
    to fill one. bench/faults.py found it: with Redis killed and restarted, the last page of
    a job waited 75 s for eight sweeper re-sends (with groups of 128 and the default grace,
    it would have waited hours).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        for task in c.app.tasks.values():
            if isinstance(task, Batches):
                restart_flush_timer(task, c.timer)


def restart_flush_timer(task: Batches, timer: Timer) -> None:
    """Forget ``task``'s flush timer (cancelled, in case it survived) and start a new one if
    requests are waiting in its buffer; otherwise the next message starts it, as usual.

    Uses celery-batches' private ``_tref``, ``_buffer`` and ``_pending`` (0.11, pinned).
    """
    if task._tref is not None:
        task._tref.cancel()
    task._tref = None
    if task._buffer.qsize() or task._pending.qsize():
        task._tref = timer.call_repeatedly(task.flush_interval, task._do_flush)
