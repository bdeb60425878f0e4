"""Tenants' own models in a worker: loaded from the blob store on demand, a few kept.

A job that names a tenant model (``POST /v1/models``) goes to the queue of the deployment's
model, whose workers read it: the batch reads each model's pages together
(``worker.serving.batch``) with the reader this cache gives. A worker keeps the
``HTRQ_MODEL_CACHE`` models it used last (the least recently used is dropped, folder and
all), so that a model many pages name is loaded once and a worker serving many tenants keeps
a bounded memory.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from htrq.errors import PageError
from htrq.jobs.claims import ReadBy
from htrq.models import TenantModel
from htrq.settings import Settings
from htrq.storage import BlobMissing, BlobStore
from htrq.storage.folders import get_folder
from worker.recognition.pipeline import Pipeline, build_pipeline
from worker.recognition.provenance import read_by

if TYPE_CHECKING:
    from worker.recognition.recognizer import Recognizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantReader:
    """What reads one tenant model's pages."""

    model_id: uuid.UUID
    sha256: str | None
    pipeline: Pipeline
    model_name: str  #: the model's name, stored on each page it reads
    read_by: ReadBy


class TenantModels:
    """A bounded cache of tenant models, keyed by id (a model is never changed once ready,
    so an id always means the same weights)."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: BlobStore,
        load: Callable[[Settings], Recognizer],
    ) -> None:
        self.settings, self.sessions, self.storage, self.load = settings, sessions, storage, load
        self.root = Path(tempfile.mkdtemp(prefix="htrq-models-"))
        self.loaded: OrderedDict[uuid.UUID, TenantReader] = OrderedDict()
        self.lock = threading.Lock()

    def reader(self, model_id: uuid.UUID) -> TenantReader:
        """The model's reader, loaded if need be; raises :class:`PageError`
        (``unknown_model``) for a model deleted or not ready."""
        with self.lock:
            if model_id in self.loaded:
                self.loaded.move_to_end(model_id)
                return self.loaded[model_id]
            reader = self._load(model_id)
            self.loaded[model_id] = reader
            while len(self.loaded) > self.settings.model_cache:
                old, _ = self.loaded.popitem(last=False)
                shutil.rmtree(self.root / old.hex, ignore_errors=True)
                log.info("tenant model %s dropped from the cache", old)
            return reader

    def _load(self, model_id: uuid.UUID) -> TenantReader:
        with self.sessions() as s:
            row = s.execute(
                select(TenantModel.name, TenantModel.artifact_key, TenantModel.model_sha256).where(
                    TenantModel.id == model_id, TenantModel.status == "ready"
                )
            ).first()
        if row is None or not row.artifact_key:
            raise _gone(model_id)
        folder = self.root / model_id.hex
        try:
            get_folder(self.storage, row.artifact_key, folder)
        except BlobMissing:
            raise _gone(model_id) from None
        settings = self.settings.model_copy(update={"model": str(folder)})
        recognizer = self.load(settings)
        provenance = read_by(settings, str(folder), recognizer.ctc_weight, recognizer.stretches)
        log.info("tenant model %s (%s) loaded", row.name, model_id)
        return TenantReader(
            model_id=model_id,
            sha256=row.model_sha256,
            pipeline=build_pipeline(settings, recognizer),
            model_name=row.name,
            read_by=dataclasses.replace(
                provenance,
                model_sha256=row.model_sha256 or provenance.model_sha256,
                model_id=model_id,
            ),
        )

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _gone(model_id: uuid.UUID) -> PageError:
    return PageError(
        "unknown_model",
        f"the job's model ({model_id}) was deleted before this page was read; submit the "
        "page again with another model",
    )
