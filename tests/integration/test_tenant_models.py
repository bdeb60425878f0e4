"""Tenant models through the real API app, PostgreSQL and Redis: created on a tenant's
corrections, trained in process with a tiny model and a few steps, cancelled, resumed after
a trainer that died, and seen by no other tenant on any route."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq.db import session_scope
from htrq.models import Job, Page, TenantModel, WebhookEvent, utcnow
from htrq.queue import TRAINER_QUEUE
from htrq.settings import Settings
from htrq.storage import BlobMissing, open_store
from htrq.tenant_models import lifecycle
from htrq.tenants import create_key, default_tenant, ensure_tenant
from tests.models import LINES, corrected_jobs
from worker.recognition.pipeline import build_pipeline
from worker.recognition.recognizer import Recognizer
from worker.serving.app import load_recognizer
from worker.serving.batch import BatchContext, process_batch
from worker.serving.tenant_models import TenantModels
from worker.training import tenant as tenant_training
from worker.training.trainer import TrainerContext, train_model

CALLBACK = "http://127.0.0.1:9/hook"  # never called here: the event is looked at in the outbox


@pytest.fixture
def train_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "train_min_lines": 8,
            "train_steps": 4,
            "train_batch_size": 4,
            "train_checkpoint_every": 2,
            "train_lease_seconds": 30,
            "train_max_attempts": 2,
        }
    )


@pytest.fixture
def client(train_settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    app = create_app(train_settings)
    app.state.sessions = sessions
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def trainer(
    train_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> TrainerContext:
    return TrainerContext(
        settings=train_settings,
        sessions=sessions,
        storage=open_store(train_settings),
        scratch=tmp_path,
    )


def _trainer_messages(broker_url: str) -> list[str]:
    client = redis.Redis.from_url(broker_url)
    # (redis-py types the synchronous client's answer as possibly awaitable.)
    messages = cast(list[bytes], client.lrange(TRAINER_QUEUE, 0, -1))
    client.close()
    return [json.loads(m)["headers"]["argsrepr"] for m in messages]


def _row(sessions: sessionmaker[Session], model_id: str) -> TenantModel:
    with sessions() as s:
        row = s.get(TenantModel, uuid.UUID(model_id))
        assert row is not None
        return row


def test_too_few_lines_is_refused_with_a_code(
    client: TestClient, sessions: sessionmaker[Session], train_settings: Settings
) -> None:
    """Below HTRQ_TRAIN_MIN_LINES, POST /v1/models is 422 too_few_lines and stores nothing."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions), jobs=1, per_job=5)
    r = client.post("/v1/models", json={"name": "mine"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "too_few_lines"
    assert "5 corrected or confirmed lines in 1 jobs" in r.json()["error"]["message"]
    assert client.get("/v1/models").json() == {"models": []}


def test_a_model_is_queued_listed_and_sent_to_the_trainers(
    client: TestClient, sessions: sessionmaker[Session], train_settings: Settings, broker_url: str
) -> None:
    """202 with the model queued, its recipe and progress; it is listed, read, and its id
    waits on the trainers' queue; a second one of the same name is 409."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    r = client.post("/v1/models", json={"name": "letters", "steps": 3})
    assert r.status_code == 202, r.text
    model = r.json()
    assert model["status"] == "queued" and model["base"] == "builtin"
    assert model["progress"] == {"step": 0, "steps": 3}
    assert model["recipe"]["steps"] == 3 and model["recipe"]["lr"] == train_settings.train_lr
    assert model["better_than_base"] is None and model["error"] is None
    assert client.get(f"/v1/models/{model['id']}").json() == model
    assert client.get("/v1/models").json() == {"models": [model]}
    assert _trainer_messages(broker_url) == [f"['{model['id']}']"]

    again = client.post("/v1/models", json={"name": "letters"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "model_exists")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "builtin"}, "invalid_model_name"),
        ({"name": "no spaces"}, "invalid_request"),
        ({"name": "x", "base": "nothing-of-mine"}, "unknown_base"),
        ({"name": "x", "steps": 10**6}, "too_many_steps"),
        ({"name": "x", "callback_url": "ftp://example.org/"}, "invalid_callback_url"),
    ],
)
def test_requests_that_cannot_train_are_refused(
    client: TestClient, body: dict[str, object], code: str
) -> None:
    """A name the service uses or cannot route, an unknown base, too many steps."""
    r = client.post("/v1/models", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code


def test_a_training_makes_a_ready_model_measured_against_its_base(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
) -> None:
    """The trainer holds out whole jobs, measures base and model on them, stores the model
    in the blob store and writes a signed model.ready event to the outbox."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions), jobs=4, per_job=3)
    model = client.post("/v1/models", json={"name": "tuned", "callback_url": CALLBACK}).json()
    train_model(model["id"], trainer)

    done = client.get(f"/v1/models/{model['id']}").json()
    assert done["status"] == "ready", done
    assert done["progress"] == {"step": 4, "steps": 4}
    assert done["heldout_jobs"] >= 1 and done["heldout_lines"] >= 2  # >= 10% of 12, whole jobs
    assert done["train_lines"] + done["heldout_lines"] == 12
    assert done["heldout_lines"] % 3 == 0
    assert isinstance(done["cer"], float) and isinstance(done["base_cer"], float)
    assert done["better_than_base"] == (done["cer"] < done["base_cer"])
    assert done["base_sha256"] and done["model_sha256"] and done["attempts"] == 1
    assert done["started_at"] and done["finished_at"]

    row = _row(sessions, model["id"])
    assert row.artifact_key and row.checkpoint_key is None  # the checkpoint was removed
    open_store(train_settings).get(row.artifact_key)
    with sessions() as s:
        (event,) = s.scalars(select(WebhookEvent).where(WebhookEvent.model_id == row.id)).all()
    payload = json.loads(event.payload)
    assert (payload["type"], payload["model_id"], payload["name"]) == (
        "model.ready",
        model["id"],
        "tuned",
    )
    assert event.job_id is None and event.url == CALLBACK


def test_a_job_naming_the_model_is_read_by_it_and_says_so(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
    recognizer: Recognizer,
) -> None:
    """model=<name> reads with the tenant's model, loaded from storage: the page records the
    model's name, id and weights digest; a name no model of the tenant has is unknown_model."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions), jobs=3, per_job=3)
    model = client.post("/v1/models", json={"name": "mine"}).json()
    train_model(model["id"], trainer)
    ready = client.get(f"/v1/models/{model['id']}").json()

    png = io.BytesIO()
    Image.open(LINES / "line_0001.png").convert("L").save(png, "PNG")
    r = client.post(
        "/v1/jobs",
        data={"mode": "line", "model": "mine"},
        files={"files": ("a.png", png.getvalue(), "image/png")},
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["model"] == "mine"
    with sessions() as s:
        row = s.get(Job, uuid.UUID(job["id"]))
        assert row is not None and row.tenant_model_id == uuid.UUID(model["id"])
        assert row.model == train_settings.model  # served by the deployment model's workers
        page_id = s.scalars(select(Page.id).where(Page.job_id == row.id)).one()

    ctx = _worker(train_settings, sessions, recognizer)
    assert process_batch([str(page_id)], ctx).succeeded == 1
    page = client.get(f"/v1/jobs/{job['id']}/pages/0").json()
    assert page["model"] == "mine"
    assert page["provenance"]["model_id"] == model["id"]
    assert page["provenance"]["model_sha256"] == ready["model_sha256"]

    unknown = client.post(
        "/v1/jobs",
        data={"mode": "line", "model": "not-mine"},
        files={"files": ("a.png", png.getvalue(), "image/png")},
    )
    assert unknown.json()["error"]["code"] == "unknown_model"


def _worker(
    settings: Settings, sessions: sessionmaker[Session], recognizer: Recognizer
) -> BatchContext:
    """What a worker process of the deployment model holds, with its tenant-model cache."""
    storage = open_store(settings)
    return BatchContext(
        settings=settings,
        sessions=sessions,
        storage=storage,
        pipeline=build_pipeline(settings, recognizer),
        model_name="tiny",
        send=lambda ids, countdown=0, queue=None: None,
        models=TenantModels(
            settings=settings, sessions=sessions, storage=storage, load=load_recognizer
        ),
    )


def test_pages_of_a_deleted_model_fail_unknown_model(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
    recognizer: Recognizer,
) -> None:
    """A model deleted after its job was submitted: its pages fail, for good, unknown_model."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions), jobs=3, per_job=3)
    model = client.post("/v1/models", json={"name": "gone"}).json()
    train_model(model["id"], trainer)
    png = io.BytesIO()
    Image.open(LINES / "line_0002.png").convert("L").save(png, "PNG")
    job = client.post(
        "/v1/jobs",
        data={"mode": "line", "model": "gone"},
        files={"files": ("a.png", png.getvalue(), "image/png")},
    ).json()
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    with sessions() as s:
        page_id = s.scalars(select(Page.id).where(Page.job_id == uuid.UUID(job["id"]))).one()
    ctx = _worker(train_settings, sessions, recognizer)
    assert process_batch([str(page_id)], ctx).failed == 1
    page = client.get(f"/v1/jobs/{job['id']}/pages/0").json()
    assert page["error"]["code"] == "unknown_model"


def test_delete_cancels_a_queued_training_then_removes_the_model(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
) -> None:
    """DELETE on a queued model: 202 cancelled, and a trainer that takes its message later
    trains nothing; DELETE again: 204, and it is gone."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "short-lived"}).json()
    r = client.delete(f"/v1/models/{model['id']}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    train_model(model["id"], trainer)
    assert _row(sessions, model["id"]).attempts == 0
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert client.get(f"/v1/models/{model['id']}").status_code == 404


def test_cancel_during_training_stops_the_trainer_and_removes_its_bytes(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model deleted while it trains: the trainer's next checkpoint is refused, it stops,
    stores no model, and the checkpoint it had sent is removed."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "stopped"}).json()
    kept: list[str] = []
    real = lifecycle.checkpoint

    def cancel_then_checkpoint(*args: object, **kwargs: object) -> bool:
        kept.append(str(kwargs["key"]))
        if len(kept) == 1:
            assert client.delete(f"/v1/models/{model['id']}").status_code == 202
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lifecycle, "checkpoint", cancel_then_checkpoint)
    train_model(model["id"], trainer)
    row = _row(sessions, model["id"])
    assert (row.status, row.artifact_key, row.checkpoint_key) == ("cancelled", None, None)
    assert len(kept) == 1  # it stopped at the first checkpoint
    with pytest.raises(BlobMissing):
        open_store(train_settings).get(kept[0])


class Died(BaseException):
    """A trainer process dying (not an Exception: nothing in the trainer catches it)."""


def test_a_trainer_that_died_is_resumed_from_its_checkpoint(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trainer dies after its first checkpoint: the model stays `training` until its lease
    runs out, the sweep sends it again, and the next claim goes on from that step."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "resumed", "steps": 6}).json()
    real = lifecycle.checkpoint

    def die_after_checkpoint(*args: object, **kwargs: object) -> bool:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise Died

    monkeypatch.setattr(lifecycle, "checkpoint", die_after_checkpoint)
    with pytest.raises(Died):
        train_model(model["id"], trainer)
    monkeypatch.setattr(lifecycle, "checkpoint", real)
    row = _row(sessions, model["id"])
    assert (row.status, row.step, row.attempts) == ("training", 2, 1)
    assert row.checkpoint_key is not None
    assert lifecycle.sweep(sessions, queued_grace=0) == []  # its lease still runs

    with session_scope(sessions) as s:
        past = utcnow() - timedelta(seconds=1)
        s.execute(update(TenantModel).values(lease_until=past, queued_at=past))
    assert lifecycle.sweep(sessions, queued_grace=0) == [row.id]

    started: list[int] = []
    fine_tune = tenant_training.fine_tune

    def watch(**kwargs: object) -> object:
        work = kwargs["work"]
        assert isinstance(work, Path)
        started.extend(int(p.name.split("-")[1]) for p in (work / "checkpoints").iterdir())
        return fine_tune(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.training.trainer.fine_tune", watch)
    train_model(model["id"], trainer)
    done = client.get(f"/v1/models/{model['id']}").json()
    assert (done["status"], done["attempts"], done["progress"]["step"]) == ("ready", 2, 6)
    assert started == [2]  # it went on from the checkpoint of step 2


def test_a_model_whose_trainer_keeps_dying_fails_with_a_reason(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
) -> None:
    """Past HTRQ_TRAIN_MAX_ATTEMPTS claims, the next claim fails it (model.failed)."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "doomed", "callback_url": CALLBACK}).json()
    with session_scope(sessions) as s:
        s.execute(
            update(TenantModel).values(
                status="training", attempts=2, lease_until=utcnow() - timedelta(seconds=1)
            )
        )
    train_model(model["id"], trainer)
    done = client.get(f"/v1/models/{model['id']}").json()
    assert done["status"] == "failed"
    assert done["error"]["code"] == "training_failed"
    assert "stopped 2 times" in done["error"]["message"]
    with sessions() as s:
        (event,) = s.scalars(select(WebhookEvent).where(WebhookEvent.model_id.is_not(None)))
        assert json.loads(event.payload)["type"] == "model.failed"


def test_another_tenants_models_are_invisible_on_every_route(
    train_settings: Settings, sessions: sessionmaker[Session], trainer: TrainerContext
) -> None:
    """Tenant B cannot list, read, delete, train from or read pages with tenant A's model;
    A's corrections do not count towards B's lines."""
    app = create_app(train_settings.model_copy(update={"auth": "on"}))
    app.state.sessions = sessions
    with session_scope(sessions) as s:
        a, b = ensure_tenant(s, "tenant-a").id, ensure_tenant(s, "tenant-b").id
    key_a = create_key(sessions, tenant="tenant-a")[1]
    key_b = create_key(sessions, tenant="tenant-b")[1]
    corrected_jobs(sessions, train_settings, a)
    corrected_jobs(sessions, train_settings, b, jobs=1, per_job=2)
    with TestClient(app, raise_server_exceptions=False) as c:
        as_a = {"Authorization": f"Bearer {key_a}"}
        as_b = {"Authorization": f"Bearer {key_b}"}
        model = c.post("/v1/models", json={"name": "a-hand"}, headers=as_a).json()
        train_model(model["id"], trainer)
        assert c.get(f"/v1/models/{model['id']}", headers=as_a).json()["status"] == "ready"

        assert c.get("/v1/models", headers=as_b).json() == {"models": []}
        for method in ("get", "delete"):
            r = getattr(c, method)(f"/v1/models/{model['id']}", headers=as_b)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        for base in ("a-hand", model["id"]):
            r = c.post("/v1/models", json={"name": "b", "base": base}, headers=as_b)
            assert r.json()["error"]["code"] == "unknown_base"
        r = c.post("/v1/models", json={"name": "b"}, headers=as_b)
        assert r.json()["error"]["code"] == "too_few_lines"  # A's lines are not B's
        png = io.BytesIO()
        Image.open(LINES / "line_0003.png").convert("L").save(png, "PNG")
        r = c.post(
            "/v1/jobs",
            data={"mode": "line", "model": "a-hand"},
            files={"files": ("a.png", png.getvalue(), "image/png")},
            headers=as_b,
        )
        assert r.json()["error"]["code"] == "unknown_model"
        # A's own model is still there, untouched by B's DELETE.
        assert c.get(f"/v1/models/{model['id']}", headers=as_a).json()["status"] == "ready"


def test_a_cancel_is_noticed_by_the_heartbeat_and_stops_the_next_step(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease's heartbeat finds the model cancelled; the training stops after one step,
    with no checkpoint and no model stored."""
    trainer.settings = train_settings.model_copy(
        update={"train_lease_seconds": 0.6, "train_checkpoint_every": 1000}
    )
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "noticed", "steps": 500}).json()
    steps: list[int] = []
    fine_tune = tenant_training.fine_tune

    def cancel_first(**kwargs: object) -> object:
        assert client.delete(f"/v1/models/{model['id']}").status_code == 202
        time.sleep(1.0)  # a few heartbeats
        hooks = kwargs["hooks"]
        beat = hooks.beat  # type: ignore[attr-defined]

        def counted(step: int) -> bool:
            steps.append(step)
            return bool(beat(step))

        hooks.beat = counted  # type: ignore[attr-defined]
        return fine_tune(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.training.trainer.fine_tune", cancel_first)
    train_model(model["id"], trainer)
    row = _row(sessions, model["id"])
    assert (row.status, row.artifact_key, row.checkpoint_key) == ("cancelled", None, None)
    assert steps == [1]


def test_a_model_goes_on_from_another_of_the_tenants_models(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
) -> None:
    """base=<a ready model's name>: the trainer starts from that model's stored weights (the
    new model's base_sha256 is its model_sha256)."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    first = client.post("/v1/models", json={"name": "first"}).json()
    train_model(first["id"], trainer)
    first = client.get(f"/v1/models/{first['id']}").json()
    second = client.post("/v1/models", json={"name": "second", "base": "first"}).json()
    assert second["base"] == first["id"]
    train_model(second["id"], trainer)
    second = client.get(f"/v1/models/{second['id']}").json()
    assert second["status"] == "ready"
    assert second["base_sha256"] == first["model_sha256"]
    assert second["model_sha256"] != first["model_sha256"]


def test_a_queued_model_whose_message_was_lost_is_sent_again(
    client: TestClient, sessions: sessionmaker[Session], train_settings: Settings
) -> None:
    """A model queued past the grace is swept, unless messages still wait on the trainers'
    queue (it waits behind them); each sweep stamps it, so it is not sent at every one."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "lost"}).json()
    assert lifecycle.sweep(sessions, queued_grace=60) == []  # just sent
    with session_scope(sessions) as s:
        s.execute(update(TenantModel).values(queued_at=utcnow() - timedelta(seconds=120)))
    assert lifecycle.sweep(sessions, queued_grace=60, queued=False) == []
    assert lifecycle.sweep(sessions, queued_grace=60) == [uuid.UUID(model["id"])]
    assert lifecycle.sweep(sessions, queued_grace=60) == []


def test_a_training_that_keeps_failing_fails_saying_why(
    client: TestClient,
    sessions: sessionmaker[Session],
    train_settings: Settings,
    trainer: TrainerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt that raises ends its lease at once (the sweeper sends it again at its next
    look); past HTRQ_TRAIN_MAX_ATTEMPTS the model fails, naming the last error."""
    corrected_jobs(sessions, train_settings, default_tenant(sessions))
    model = client.post("/v1/models", json={"name": "broken"}).json()

    def boom(**kwargs: object) -> None:
        raise RuntimeError("the fine-tune broke")

    monkeypatch.setattr("worker.training.trainer.fine_tune", boom)
    for attempt in (1, 2):
        train_model(model["id"], trainer)
        row = _row(sessions, model["id"])
        assert (row.status, row.attempts) == ("training", attempt)
        assert row.lease_until is not None and row.lease_until <= utcnow()
        with session_scope(sessions) as s:
            s.execute(update(TenantModel).values(queued_at=utcnow() - timedelta(seconds=1)))
        assert lifecycle.sweep(sessions, queued_grace=0) == [row.id]
    train_model(model["id"], trainer)
    done = client.get(f"/v1/models/{model['id']}").json()
    assert done["status"] == "failed" and done["error"]["code"] == "training_failed"
    assert "last error: the fine-tune broke" in done["error"]["message"]
