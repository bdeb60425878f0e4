"""A worker that cannot load its model stops with a failure status a supervisor can see."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_worker_without_its_model_exits_non_zero(
    database_url: str, broker_url: str, tmp_path: Path
):
    """`htrq worker` with a model path that does not exist exits 1 and says why."""
    env = {
        **os.environ,
        "HTRQ_DATABASE_URL": database_url,
        "HTRQ_BROKER_URL": broker_url,
        "HTRQ_STORAGE_DIR": str(tmp_path),
        "HTRQ_MODEL": str(tmp_path / "no-such-model"),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "htrq.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "cannot load the model" in proc.stderr


@pytest.mark.slow
def test_a_worker_whose_model_cannot_read_exits_without_claiming(
    database_url: str, broker_url: str, tiny_model: Path, tmp_path: Path, settings, engine
):
    """A model that loads but whose generation raises (its processor makes images of a size
    the encoder refuses) stops the worker with exit 1 and one clear line; the page queued
    before it started is never claimed."""
    import json
    import shutil

    from sqlalchemy import delete

    from htrq import jobs
    from htrq.db import make_sessions
    from htrq.models import Job, Page
    from htrq.queue import CelerySender, make_celery
    from htrq.storage import DirectoryStore
    from htrq.tenants import default_tenant
    from tests.images import page_png

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    cfg = json.loads((broken / "processor_config.json").read_text())
    cfg["image_processor"]["size"] = {"height": 24, "width": 128}  # the encoder takes 16x128
    (broken / "processor_config.json").write_text(json.dumps(cfg))

    # Committed and on the broker, so that a worker that did start would take it.
    settings = settings.model_copy(update={"broker_url": broker_url})
    sessions = make_sessions(engine)
    job, _ = jobs.submit(
        sessions=sessions,
        tenant_id=default_tenant(sessions),
        storage=DirectoryStore(tmp_path / "blobs"),
        send=CelerySender(make_celery(settings)),
        settings=settings,
        uploads=[jobs.Upload("p.png", page_png())],
        mode="page",
    )
    env = {
        **os.environ,
        "HTRQ_DATABASE_URL": database_url,
        "HTRQ_BROKER_URL": broker_url,
        "HTRQ_STORAGE_DIR": str(tmp_path / "blobs"),
        "HTRQ_MODEL": str(broken),
        "HF_HUB_OFFLINE": "1",
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "htrq.cli", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        with sessions() as s:
            page = s.get(Page, job.pages[0].id)
            assert page is not None
            status = (page.status, page.attempts)
    finally:
        with sessions.begin() as s:
            s.execute(delete(Job).where(Job.id == job.id))
    assert status == ("queued", 0)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "cannot read with the model" in ln]
    assert len(lines) == 1 and str(broken) in lines[0] and "stopping the worker" in lines[0]
    assert "Traceback" not in proc.stderr
