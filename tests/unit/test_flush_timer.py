"""The worker's partial groups still flush after a lost broker connection."""

from __future__ import annotations

from types import SimpleNamespace

from kombu.asynchronous.timer import Timer

from htrq.queue import PROCESS_PAGE
from htrq.settings import Settings
from worker.serving.app import create_app
from worker.serving.tasks import RestartFlushTimers


def _fire(timer: Timer) -> None:
    for _eta, _priority, entry in timer.queue:
        if not entry.canceled:
            entry()


def test_a_partial_group_is_flushed_after_the_broker_reconnects() -> None:
    """A page waiting in a partial group is read after Celery dropped the event loop's timers
    on a lost connection: the consumer's restart starts celery-batches' flush timer again."""
    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        broker_url="redis://127.0.0.1:1/0",
        flush_every=8,
    )
    app = create_app(settings)  # connects to nothing
    task = app.tasks[PROCESS_PAGE]
    flushed: list[list[object]] = []
    task.flush = lambda requests: flushed.append(list(requests))
    timer = Timer()

    # What celery-batches' message handler does with the first message of a group...
    waiting = SimpleNamespace(eta=None)
    task._buffer.put(waiting)
    task._tref = timer.call_repeatedly(task.flush_interval, task._do_flush)
    # ...and what Celery's event loop does when the broker connection is lost.
    timer.clear()
    _fire(timer)
    assert flushed == []

    # The consumer reconnects: its steps start again, htrq's among them (the tenant-queue
    # step needs a real consumer; this one only needs the app and the timer).
    assert RestartFlushTimers in app.steps["consumer"]
    consumer = SimpleNamespace(app=app, timer=timer)
    RestartFlushTimers(consumer).start(consumer)
    _fire(timer)
    assert flushed == [[waiting]]

    # With nothing waiting, a restart leaves the timer to the next message, as before.
    RestartFlushTimers(consumer).start(consumer)
    assert task._tref is None
