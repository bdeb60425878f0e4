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
