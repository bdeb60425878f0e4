"""The page queue: one broker message per page id. No torch and no task code here.

The API and the sweeper send by task name, so that the API image need not import the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from celery import Celery

from htrq.settings import Settings

#: Name under which the worker registers its batch task.
PROCESS_PAGE = "htrq.process_page"
#: Broker queue the pages travel on.
PAGE_QUEUE = "htrq.pages"

#: ``send(page_ids, countdown_seconds)``: how service functions enqueue pages.
Send = Callable[[Sequence[str], float], None]


def make_celery(settings: Settings, name: str = "htrq") -> Celery:
    """A Celery app on the configured broker, with the settings producers and workers share."""
    if not settings.broker_url:
        raise ValueError("HTRQ_BROKER_URL is not set")
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=PAGE_QUEUE,
        task_routes={PROCESS_PAGE: {"queue": PAGE_QUEUE}},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        # A send must not hang an API request while the broker is down.
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    return app


class CelerySender:
    """Send page ids to the page queue; ``countdown`` delays a re-send (backoff)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, page_ids: Sequence[str], countdown: float = 0) -> None:
        with self.app.producer_or_acquire() as producer:
            for page_id in page_ids:
                self.app.send_task(
                    PROCESS_PAGE,
                    args=[str(page_id)],
                    countdown=countdown or None,
                    producer=producer,
                )

    def queue_depth(self) -> int:
        """Messages waiting in the broker queue (not those already reserved by workers)."""
        with self.app.connection_for_write() as conn:
            try:
                ok = conn.default_channel.queue_declare(PAGE_QUEUE, passive=True)
            except conn.channel_errors:
                return 0  # never declared: no worker has started and nothing was sent
            return int(ok.message_count)

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
