"""Tenant models end to end: real ``htrq api``, ``htrq worker`` and ``htrq trainer``
processes on Redis and PostgreSQL, driven through the HTTP API with the Python client."""

from __future__ import annotations

import json
import signal

import pytest
from sqlalchemy import Engine

from htrq.client import Client
from htrq.db import make_sessions
from htrq.delivery.webhooks import SIGNATURE_HEADER, verify
from htrq.settings import Settings
from htrq.tenants import webhook_secret
from tests.models import LINES
from tests.receiver import Receiver
from tests.services import Processes, service_env, wait_for
from worker.training.data import read_lines_tsv

pytestmark = pytest.mark.slow


def _settings(settings: Settings, **more: object) -> Settings:
    return settings.model_copy(
        update={
            "train_min_lines": 8,
            "train_steps": 6,
            "train_batch_size": 4,
            "train_checkpoint_every": 3,
            "train_lease_seconds": 5,
            "trainer_threads": 1,
            **more,
        }
    )


def _correct_three_jobs(htrq: Client) -> None:
    """Three line-mode jobs of four real lines each, read by the worker, then every line
    corrected to its ground truth by PATCH."""
    pairs = read_lines_tsv(LINES)
    for j in range(3):
        lines = pairs[4 * j : 4 * j + 4]
        job = htrq.wait(htrq.submit([p for p, _ in lines], mode="line").id, timeout=300)
        assert job.status == "succeeded", job
        for i, (_, text) in enumerate(lines):
            assert htrq.correct(job.id, i, 0, text).text == text


def test_corrections_become_a_model_that_reads_the_tenants_next_job(
    processes: Processes, settings: Settings, engine: Engine
) -> None:
    """Submit, correct by PATCH, POST /v1/models: the trainer trains it, a signed
    model.ready event arrives, and a job naming the model is read by it (provenance says so);
    DELETE removes it and a job naming it again is unknown_model."""
    settings = _settings(settings)
    env = service_env(settings)
    processes.worker("w1", env)
    trainer, log = processes.start("trainer", ["trainer", "--loglevel=info"], env)
    wait_for(lambda: b" ready." in log.read_bytes(), "the trainer to start", trainer, log)
    url = processes.api(env)
    with Receiver() as receiver, Client(url) as htrq:
        _correct_three_jobs(htrq)
        model = htrq.train("letters", callback_url=receiver.url)
        assert model.status == "queued"
        model = htrq.wait_model(model.id, timeout=300, interval=1)
        assert model.status == "ready", model
        assert model.cer is not None and model.base_cer is not None
        assert model.train_lines and model.heldout_lines and model.model_sha256

        wait_for(lambda: bool(receiver.accepted()), "the model.ready event", timeout=120)
        (event,) = receiver.accepted()
        secret = webhook_secret(make_sessions(engine), "default")
        assert verify(secret, event.body, event.headers[SIGNATURE_HEADER])
        body = json.loads(event.body)
        assert (body["type"], body["model_id"]) == ("model.ready", str(model.id))

        (path, _), *_ = read_lines_tsv(LINES)
        job = htrq.wait(htrq.submit([path], mode="line", model="letters").id, timeout=300)
        assert job.status == "succeeded" and job.model == "letters"
        page = htrq.page(job.id, 0)
        assert page.model == "letters" and page.provenance is not None
        assert page.provenance.model_id == model.id
        assert page.provenance.model_sha256 == model.model_sha256

        htrq.delete_model(model.id)
        assert htrq.models() == []
        with pytest.raises(Exception, match="unknown_model"):
            htrq.submit([path], mode="line", model="letters")


def test_a_trainer_killed_mid_training_is_taken_over_by_another(
    processes: Processes, settings: Settings
) -> None:
    """SIGKILL a trainer after its first checkpoint: the model stays `training` until its
    lease runs out, then the other trainer's sweeper sends it again and that trainer goes on
    from the checkpoint to `ready` (two attempts)."""
    settings = _settings(settings, train_steps=60, train_checkpoint_every=3)
    env = service_env(settings)
    processes.worker("w1", env)
    url = processes.api(env)
    first, log = processes.start("trainer-1", ["trainer", "--hostname=t1@%h"], env)
    wait_for(lambda: b" ready." in log.read_bytes(), "trainer 1 to start", first, log)
    with Client(url) as htrq:
        _correct_three_jobs(htrq)
        model = htrq.train("resumed")
        wait_for(lambda: htrq.model(model.id).progress.step >= 3, "a checkpoint", first, log)
        processes.kill(first, signal.SIGKILL)
        assert htrq.model(model.id).status == "training"

        _, log2 = processes.start("trainer-2", ["trainer", "--hostname=t2@%h"], env)
        done = htrq.wait_model(model.id, timeout=600, interval=1)
        assert done.status == "ready", (done, log2.read_text()[-3000:])
        assert done.attempts == 2
        assert b"resuming from step" in log2.read_bytes()
