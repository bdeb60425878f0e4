"""Corrected lines for tenant-model tests: real line images submitted as ``mode=line`` jobs,
stored as a worker would have read them (wrongly), then corrected as an archivist would."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from htrq.jobs.corrections import correct_line
from htrq.settings import Settings
from htrq.storage import open_store
from tests.finished import Read, finish, submit
from worker.training.data import read_lines_tsv

LINES = Path(__file__).parent / "resources" / "heldout-lines"


def corrected_jobs(
    sessions: sessionmaker[Session],
    settings: Settings,
    tenant_id: uuid.UUID,
    *,
    jobs: int = 3,
    per_job: int = 4,
    offset: int = 0,
) -> list[uuid.UUID]:
    """``jobs`` line-mode jobs of ``per_job`` lines each, every line corrected to its ground
    truth; returns the jobs' ids."""
    pairs = read_lines_tsv(LINES)
    storage = open_store(settings)
    made = []
    for j in range(jobs):
        chosen = [pairs[(offset + j * per_job + i) % len(pairs)] for i in range(per_job)]
        files = []
        for i, (path, _) in enumerate(chosen):
            buf = io.BytesIO()
            Image.open(path).convert("L").save(buf, "PNG")
            files.append((f"line-{j}-{i}.png", buf.getvalue()))
        job_id = submit(sessions, storage, settings, tenant_id, files, mode="line")
        for i, (path, text) in enumerate(chosen):
            with Image.open(path) as im:
                w, h = im.size
            finish(sessions, job_id, i, [Read("x" + text[1:], 0.4, (0, 0, w, h))], (w, h))
            correct_line(
                sessions=sessions,
                tenant_id=tenant_id,
                job_id=job_id,
                page_index=i,
                line_index=0,
                text=text,
            )
        made.append(job_id)
    return made
