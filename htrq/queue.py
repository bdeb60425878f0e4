"""The page queues: one broker message per page id. No torch and no task code here.

Pages travel on a queue per model, so that a worker serves the model it loads: ``htrq.<model>``
(``htrq.builtin``; another model's name is made safe by :func:`model_slug`). With fair share
(``HTRQ_FAIR_SHARE``, the default) each tenant has a queue of its own within its model's,
``htrq.<model>.<tenant id>``, and a worker consumes all of its model's tenant queues. The
Redis transport pops them in rotation (kombu's ``round_robin`` queue order: the queue a
message came from goes to the back of the list), so a tenant's next page waits for one
message of each other tenant with pages queued, not for their whole backlog.

The API and the sweeper send by task name, so that the API image need not import the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol

from celery import Celery

from htrq.settings import Settings

#: Name under which the worker registers its batch task.
PROCESS_PAGE = "htrq.process_page"
#: Name under which ``htrq trainer`` registers its task: train one tenant model.
TRAIN_MODEL = "htrq.train_model"
#: The trainers' queue (outside ``htrq.*``, so that page queue depths never count it).
TRAINER_QUEUE = "htrq-trainer"
#: The single queue of earlier versions. Workers still consume it, so that pages sent before
#: an upgrade are read; nothing is sent to it any more.
LEGACY_QUEUE = "htrq.pages"
#: Prefix of every page queue.
QUEUE_PREFIX = "htrq."

_SAFE = re.compile(r"[A-Za-z0-9_-]{1,48}")


class Send(Protocol):
    """How service functions enqueue pages: ``send(page_ids, countdown, queue=...)``;
    ``countdown`` delays the messages (re-send backoff)."""

    def __call__(
        self, page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None
    ) -> None: ...


def model_slug(model: str) -> str:
    """A queue-safe name for a model setting: ``builtin`` stays ``builtin``; a hub id or a
    path becomes its last part, cleaned, and 8 hex digits of the whole name's SHA-256
    (``microsoft/trocr-base-handwritten`` → ``trocr-base-handwritten-1b0d2e2c``), so that two
    paths ending alike still get two queues."""
    if _SAFE.fullmatch(model):
        return model
    tail = re.sub(r"[^A-Za-z0-9_-]+", "-", model.rstrip("/").rsplit("/", 1)[-1]).strip("-")
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{tail[:40]}-{digest}" if tail else digest


def model_queue(model: str) -> str:
    """The queue of every page of ``model`` when fair share is off (and of re-sends whose
    tenant is not known)."""
    return QUEUE_PREFIX + model_slug(model)


def tenant_queue(model: str, tenant_id: uuid.UUID) -> str:
    """One tenant's queue within a model's."""
    return f"{model_queue(model)}.{tenant_id.hex}"


def page_queue(settings: Settings, *, model: str | None, tenant_id: uuid.UUID) -> str:
    """Where a page of ``tenant_id`` for ``model`` (None: the default, ``HTRQ_MODEL``) goes."""
    name = model or settings.model
    return tenant_queue(name, tenant_id) if settings.fair_share else model_queue(name)


def worker_queues(settings: Settings, tenants: Iterable[uuid.UUID] = ()) -> list[str]:
    """The queues a worker of ``settings.model`` consumes: its model's queue, the legacy
    queue, and (with fair share) one per tenant."""
    base = [model_queue(settings.model), LEGACY_QUEUE]
    if not settings.fair_share:
        return base
    return base + sorted(tenant_queue(settings.model, t) for t in tenants)


def make_celery(settings: Settings, name: str = "htrq") -> Celery:
    """A Celery app on the configured broker, with the settings producers and workers share."""
    if not settings.broker_url:
        raise ValueError("HTRQ_BROKER_URL is not set")
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=model_queue(settings.model),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Explicit, since fair share rests on it: after each message, the queue it came
            # from goes to the back of the list the next BRPOP takes from (kombu's default).
            "queue_order_strategy": "round_robin",
        },
        broker_connection_retry_on_startup=True,
        # A send must not hang an API request while the broker is down.
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    return app


class CelerySender:
    """Send page ids to a page queue; ``countdown`` delays a re-send (backoff)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(
        self, page_ids: Sequence[str], countdown: float = 0, *, queue: str | None = None
    ) -> None:
        queue = queue or str(self.app.conf.task_default_queue)
        with self.app.producer_or_acquire() as producer:
            for page_id in page_ids:
                self.app.send_task(
                    PROCESS_PAGE,
                    args=[str(page_id)],
                    countdown=countdown or None,
                    queue=queue,
                    producer=producer,
                )

    def send_training(self, model_id: str) -> None:
        """Put a tenant model's training on the trainers' queue (``htrq trainer``)."""
        self.app.send_task(TRAIN_MODEL, args=[str(model_id)], queue=TRAINER_QUEUE)

    def queue_depth(self, queues: Iterable[str] | None = None) -> int:
        """Messages waiting in ``queues`` (default: every page queue on the broker), not
        counting those already reserved by workers."""
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            names = list(queues) if queues is not None else _page_queues(channel)
            total = 0
            for name in names:
                # A queue never declared, or empty, raises: nothing waits there.
                with contextlib.suppress(*conn.channel_errors):
                    # (Typed as kombu's abstract channel, which lacks it; every transport's
                    # channel has queue_declare.)
                    declared = channel.queue_declare(name, passive=True)  # type: ignore[attr-defined]
                    total += int(declared.message_count)
            return total

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)


def _page_queues(channel: object) -> list[str]:
    """The page queues that hold messages, found by their keys (the Redis transport keeps a
    queue as a list under its name, and its priority levels under the name and a suffix)."""
    acquire = getattr(channel, "conn_or_acquire", None)
    if acquire is None:  # not the Redis transport: only the legacy queue can be named
        return [LEGACY_QUEUE]
    sep = getattr(channel, "sep", "\x06\x16")
    names = set()
    with acquire() as client:
        for key in client.scan_iter(match=QUEUE_PREFIX + "*", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            names.add(name.split(sep, 1)[0])
    return sorted(names)
