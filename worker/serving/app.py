"""The worker's Celery app, built from settings.

The recognizer is loaded once per worker process, after the fork (``worker_process_init``),
never at import: the main process stays free of torch and of CUDA state that forks badly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, signals
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import make_engine, make_sessions
from htrq.queue import CelerySender, Send, make_celery
from htrq.settings import Settings, load_settings
from htrq.storage import open_store
from worker.recognition.pipeline import build_pipeline
from worker.recognition.provenance import read_by
from worker.recognition.reading import CannotRead, check_reads, line_reader
from worker.serving import worker_metrics
from worker.serving.batch import BatchContext
from worker.serving.queues import QueueWatcher, list_tenants, tenant_queues_step
from worker.serving.sweeper import SweeperThread, WebhookThread
from worker.serving.tasks import RestartFlushTimers, register_tasks
from worker.serving.tenant_models import TenantModels

if TYPE_CHECKING:
    from worker.recognition.recognizer import Recognizer

log = logging.getLogger(__name__)

_app: Celery | None = None
_settings: Settings | None = None
_context: BatchContext | None = None
_sweeper: SweeperThread | None = None
_webhooks: WebhookThread | None = None
_watcher: QueueWatcher | None = None
#: The worker's main process, which pool processes inherit through the fork.
_main_pid = os.getpid()
#: Set by a child process that could not load the model, so the main process exits non-zero
#: (shared memory made before the pool forks).
model_failed = multiprocessing.Value("b", 0)


def load_recognizer(settings: Settings) -> Recognizer:
    """The recognizer the settings describe (imports torch: call it only where it runs)."""
    from worker.recognition.recognizer import Recognizer

    return Recognizer.load(
        model=settings.model,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        num_beams=settings.num_beams,
        max_new_tokens=settings.max_new_tokens,
        ctc_weight=settings.ctc_weight,
        quantize=settings.quantize,
        stretches=settings.stretch_factors,
        # A job names its language; the recognizer's own is the deployment's default, for
        # callers that name none (htrq transcribe, the check that the model reads).
        language=settings.language,
        word_weight=settings.word_weight,
        word_floor=settings.word_floor,
        word_boxes=settings.word_boxes,
    )


def load_context(
    settings: Settings,
    *,
    database_url: str,
    send: Send,
    record_metrics: bool = False,
) -> BatchContext:
    """Load the model, check that it reads, open the database: everything a process needs
    to run batches (raises ``CannotRead`` for a model that loads but cannot read).

    With ``record_metrics`` the recognizer's calls after the check are timed
    (``htrq_worker_generate_seconds``).
    """
    recognizer = load_recognizer(settings)
    if settings.word_weight:
        # Every language a job may name, loaded now: a missing lexicon stops the worker at
        # start rather than failing pages with model_error.
        from worker.recognition.word_prior import shipped_lexicon

        for language in settings.allowed_languages:
            shipped_lexicon(language)
    check_reads(line_reader(recognizer))
    if record_metrics:
        recognizer.on_generate = worker_metrics.generate_timer(recognizer.name)
    sessions = make_sessions(make_engine(database_url))
    storage = open_store(settings)
    return BatchContext(
        settings=settings,
        sessions=sessions,
        storage=storage,
        pipeline=build_pipeline(settings, recognizer),
        model_name=recognizer.name,
        read_by=read_by(settings, recognizer.path, recognizer.ctc_weight, recognizer.stretches),
        send=send,
        # Tenants' own models: their jobs come to this model's queue (htrq.jobs.submit).
        models=TenantModels(
            settings=settings, sessions=sessions, storage=storage, load=load_recognizer
        ),
    )


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get_context() -> BatchContext:
    """This process's context, loaded on first use if no signal has loaded it yet."""
    global _context
    if _context is None:
        assert _app is not None and _settings is not None and _settings.database_url
        import torch

        torch.set_num_threads(_settings.threads_per_process(available_cpus()))
        _context = load_context(
            _settings,
            database_url=_settings.database_url,
            send=CelerySender(_app),
            record_metrics=True,
        )
        worker_metrics.process_ready(_context.model_name)
        log.info(
            "worker process ready: model %s, %d torch threads",
            _context.model_name,
            torch.get_num_threads(),
        )
    return _context


def create_app(settings: Settings) -> Celery:
    """The worker app: late acks, prefetch sized for celery-batches, the batch task."""
    global _app, _settings
    if not settings.database_url:
        raise ValueError("HTRQ_DATABASE_URL is not set")
    app = make_celery(settings, name="htrq-worker")
    app.conf.update(
        task_acks_late=True,
        # A message whose worker process died is put back instead of acknowledged.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        worker_concurrency=settings.worker_concurrency,
        worker_send_task_events=False,
    )
    register_tasks(app, settings, get_context)
    app.steps["consumer"].add(RestartFlushTimers)
    global _main_pid, _watcher
    _app, _settings, _main_pid = app, settings, os.getpid()
    # The model's queue of every tenant, as tenants are made (worker/serving/queues.py).
    _watcher = QueueWatcher(settings=settings, tenants=_tenant_lister(settings.database_url))
    app.steps["consumer"].add(tenant_queues_step(_watcher))
    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid="htrq-init")
    signals.worker_ready.connect(_start_sweeper, weak=False, dispatch_uid="htrq-sweeper")
    signals.worker_shutdown.connect(_stop_sweeper, weak=False, dispatch_uid="htrq-stop")
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="htrq-process-exit"
    )
    return app


def _tenant_lister(database_url: str) -> Callable[[], list[uuid.UUID]]:
    """Lists the tenants on an engine of the main process, made on first use (after the
    pool's processes were forked, which make their own)."""
    sessions: sessionmaker[Session] | None = None

    def tenants() -> list[uuid.UUID]:
        nonlocal sessions
        if sessions is None:
            sessions = make_sessions(make_engine(database_url, pool_size=1))
        return list_tenants(sessions)

    return tenants


def _on_process_init(**_: Any) -> None:
    global _context
    _context = None  # never reuse a parent's engine or model after a fork
    try:
        get_context()
    except Exception as exc:
        # A worker without a model that reads would take pages and fail every one of them:
        # stop the whole worker (the main process, which is this one under --pool=solo)
        # instead, before it claims any. One line says why; the traceback is for debugging.
        assert _settings is not None
        what = "cannot read with" if isinstance(exc, CannotRead) else "cannot load"
        log.critical("%s the model %s (%s); stopping the worker", what, _settings.model, exc)
        log.debug("model failure", exc_info=True)
        model_failed.value = 1
        os.kill(_main_pid, signal.SIGTERM)


def _on_process_shutdown(**_: Any) -> None:
    worker_metrics.process_exiting()
    if _context is not None and _context.models is not None:
        _context.models.close()  # the tenant models unpacked in this process


def _start_sweeper(**_: Any) -> None:
    global _sweeper, _webhooks
    assert _app is not None and _settings is not None and _settings.database_url
    sessions = make_sessions(make_engine(_settings.database_url))
    _sweeper = SweeperThread(
        sessions=sessions,
        sender=CelerySender(_app),
        settings=_settings,
        storage=open_store(_settings),
    )
    _sweeper.start()
    _webhooks = WebhookThread(sessions=sessions, settings=_settings)
    _webhooks.start()
    if "max_attempts" in _settings.model_fields_set:
        # A page's attempt limit is fixed by the API at submit (and retry), stored on it.
        log.warning(
            "HTRQ_MAX_ATTEMPTS is set on this worker, which does not read it: set it on the "
            "API, which gives each page its attempt limit at submit and retry"
        )
    if _watcher is not None and not _watcher.is_alive():
        _watcher.start()


def _stop_sweeper(**_: Any) -> None:
    for thread in (_sweeper, _webhooks, _watcher):
        if thread is not None:
            thread.stop()


def __getattr__(name: str) -> Celery:
    # `celery -A worker.serving.app worker` looks up `app`: build it from the environment on demand.
    if name == "app":
        return _app or create_app(load_settings())
    raise AttributeError(name)
