"""``htrq corrections export``: checked lines become a ``lines.tsv`` folder of crops cut as
the worker cut them for its reader (real pipeline, tiny model, PostgreSQL)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from htrq.db import make_sessions, session_scope
from htrq.inputs import render_page
from htrq.jobs.corrections import correct_line
from htrq.models import Job, Page, Tenant, utcnow
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import UnknownTenant, ensure_tenant
from tests.finished import Read, finish, letter_png, submit
from worker.recognition.pipeline import build_pipeline
from worker.recognition.recognizer import Recognizer
from worker.segmentation.preprocess import SKEW_INFO_KEY, normalise_page
from worker.serving.batch import BatchContext, process_batch
from worker.training.data import read_column, read_lines_tsv
from worker.training.reviewed_lines import export_corrections
from worker.training.writers import split_collection

LINES = Path(__file__).parents[1] / "resources" / "heldout-lines"


class Tap:
    """The worker's own line reader, keeping a copy of every crop it is given."""

    def __init__(self, read: Callable[[Sequence[Image.Image]], list]) -> None:
        self.read, self.crops = read, []

    def __call__(self, crops: Sequence[Image.Image]) -> list:
        self.crops.append([c.copy() for c in crops])
        return self.read(crops)


def _read_through_the_worker(
    settings: Settings,
    sessions: sessionmaker[Session],
    recognizer: Recognizer,
    tenant: str,
    files: list[tuple[str, bytes]],
    mode: str,
) -> tuple[uuid.UUID, list[list[Image.Image]]]:
    """Submit ``files`` as a job and read each page with the worker's batch code, one batch
    per page; returns the job id and, per page, the crops its reader got."""
    with session_scope(sessions) as s:
        tenant_id = ensure_tenant(s, tenant).id
    storage = open_store(settings)
    job_id = submit(sessions, storage, settings, tenant_id, files, mode=mode)
    pipeline = build_pipeline(settings, recognizer)
    tap = Tap(pipeline.read)
    pipeline.read = tap
    ctx = BatchContext(
        settings=settings,
        sessions=sessions,
        storage=storage,
        pipeline=pipeline,
        model_name="tiny",
        send=lambda ids, countdown=0, queue=None: None,
    )
    with sessions() as s:
        pages = s.scalars(select(Page.id).where(Page.job_id == job_id).order_by(Page.index)).all()
    for page_id in pages:
        assert process_batch([str(page_id)], ctx).succeeded == 1
    return job_id, tap.crops


def _correct(sessions, job_id, page, line, **change):  # type: ignore[no-untyped-def]
    return correct_line(
        sessions=sessions,
        tenant_id=_tenant_of(sessions, job_id),
        job_id=job_id,
        page_index=page,
        line_index=line,
        **change,
    )


def _tenant_of(sessions: sessionmaker[Session], job_id: uuid.UUID) -> uuid.UUID:
    with sessions() as s:
        return s.scalars(select(Job.tenant_id).where(Job.id == job_id)).one()


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("L"), dtype=np.int16)


def test_a_line_page_exports_exactly_the_crop_its_reader_got(
    settings: Settings,
    sessions: sessionmaker[Session],
    recognizer: Recognizer,
    tmp_path: Path,
) -> None:
    """mode=line pages read by the worker and corrected: lines.tsv has the corrections, the
    model's readings beside them and the job as writer_or_document, and each PNG is pixel
    for pixel the crop the worker's reader was given."""
    files = [(p.name, p.read_bytes()) for p in sorted(LINES.glob("line_000[0-1].png"))]
    job_id, crops = _read_through_the_worker(
        settings, sessions, recognizer, "export-test", files, "line"
    )
    first = _correct(sessions, job_id, 0, 0, text="Dear Sir, yours truly")
    second = _correct(sessions, job_id, 1, 0, text="Sincerely")
    assert first.corrected and second.corrected

    report = export_corrections(
        sessions=sessions,
        storage=open_store(settings),
        settings=settings,
        out=tmp_path / "out",
        tenant="export-test",
    )
    assert (report.lines, report.pages, report.jobs, report.skipped) == (2, 2, 1, [])
    pairs = read_lines_tsv(tmp_path / "out")
    assert [t for _, t in pairs] == ["Dear Sir, yours truly", "Sincerely"]
    assert read_column(tmp_path / "out", "writer_or_document") == [str(job_id)] * 2
    assert read_column(tmp_path / "out", "model_text") == [first.model_text, second.model_text]
    for (path, _), (crop,) in zip(pairs, crops, strict=True):
        with Image.open(path) as exported:
            assert exported.size == crop.size
            assert np.array_equal(_pixels(exported), _pixels(crop))
    # htrq train's writer split sees one document.
    split = split_collection(tmp_path / "out", writable=lambda _: True, val_lines=1)
    assert len(split.train) == 2 and split.val_writers == ()


def test_a_turned_page_exports_its_lines_as_the_reader_saw_them(
    settings: Settings,
    sessions: sessionmaker[Session],
    recognizer: Recognizer,
    tmp_path: Path,
) -> None:
    """On a page the worker deskewed, every corrected line is cut from the deskewed page
    again: each crop matches the reader's to within a pixel of size and a few grey levels."""
    from worker.training.synth_pages import render_page as synth_page

    page = synth_page(3, size=(900, 640), max_skew=0.0)
    turned = page.image.rotate(2.0, fillcolor=235, resample=Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    turned.save(buf, "PNG")
    raw = render_page(buf.getvalue())
    assert abs(normalise_page(raw, max_pixels=10**8).info[SKEW_INFO_KEY]) >= 1.0

    job_id, crops = _read_through_the_worker(
        settings, sessions, recognizer, "export-test", [("turned.png", buf.getvalue())], "page"
    )
    (page_crops,) = crops
    assert len(page_crops) >= 3
    for i in range(len(page_crops)):  # the tiny model's readings may be empty: correct them
        _correct(sessions, job_id, 0, i, text=f"line {i}")
    report = export_corrections(
        sessions=sessions,
        storage=open_store(settings),
        settings=settings,
        out=tmp_path / "out",
        tenant="export-test",
    )
    assert report.lines == len(page_crops)
    for (path, _), crop in zip(read_lines_tsv(tmp_path / "out"), page_crops, strict=True):
        with Image.open(path) as exported:
            assert abs(exported.width - crop.width) <= 2
            assert abs(exported.height - crop.height) <= 2
            same = exported.resize(crop.size)
            assert np.abs(_pixels(same) - _pixels(crop)).mean() < 8


def test_the_export_keeps_checked_lines_of_a_tenant_since_a_date(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Corrected lines go out with the correction, confirmed ones with the model's reading;
    unchecked lines, empty corrections, other tenants' jobs and lines checked before --since
    stay out; an unknown tenant is refused."""
    storage = open_store(settings)
    with session_scope(sessions) as s:
        mine, theirs = ensure_tenant(s, "export-mine").id, ensure_tenant(s, "export-theirs").id
    lines = [
        Read("Dear Sir,", 0.97, (20, 20, 200, 60)),
        Read("yours truIy", 0.55, (20, 80, 300, 120)),
        Read("J. Smith", 0.62, (20, 140, 220, 180)),
    ]
    jobs = {}
    for name, tenant in (("mine", mine), ("theirs", theirs)):
        jobs[name] = submit(sessions, storage, settings, tenant, [("l.png", letter_png(lines))])
        finish(sessions, jobs[name], 0, lines, (480, 200))
        _correct(sessions, jobs[name], 0, 1, text="yours truly")
    _correct(sessions, jobs["mine"], 0, 0, reviewed=True)
    _correct(sessions, jobs["mine"], 0, 2, text="")  # nothing on this line: nothing to learn

    def export(**filters) -> list[str]:  # type: ignore[no-untyped-def]
        out = tmp_path / uuid.uuid4().hex
        report = export_corrections(
            sessions=sessions, storage=storage, settings=settings, out=out, **filters
        )
        # read_lines_tsv refuses a folder of no lines (a header alone): nothing to train on.
        return [t for _, t in read_lines_tsv(out)] if report.lines else []

    assert export(tenant="export-mine") == ["Dear Sir,", "yours truly"]
    assert export(tenant="export-theirs") == ["yours truly"]
    assert len(export(since=utcnow() - timedelta(hours=1))) >= 3  # every tenant's
    assert export(tenant="export-mine", since=utcnow() - timedelta(hours=1)) == [
        "Dear Sir,",
        "yours truly",
    ]
    assert export(tenant="export-mine", since=utcnow() + timedelta(hours=1)) == []
    with pytest.raises(UnknownTenant):
        export(tenant="nobody")


@pytest.mark.slow
def test_the_command_writes_the_folder_htrq_train_reads(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """`htrq corrections export OUT --tenant T` on the database prints the lines.tsv it
    wrote; a tenant that does not exist exits 1 saying so."""
    sessions = make_sessions(engine)
    storage = open_store(settings)
    try:
        with session_scope(sessions) as s:
            tenant = ensure_tenant(s, "export-cli").id
        lines = [Read("Dear Sir,", 0.5, (0, 0, 160, 32))]
        png = letter_png(lines, (160, 32))
        job = submit(sessions, storage, settings, tenant, [("l.png", png)])
        finish(sessions, job, 0, lines, (160, 32))
        _correct(sessions, job, 0, 0, text="Dear Sirs,")
        env = {
            **os.environ,
            "HTRQ_DATABASE_URL": settings.database_url or "",
            "HTRQ_STORAGE_DIR": str(settings.storage_dir),
        }
        run = [sys.executable, "-m", "htrq.cli", "corrections", "export", str(tmp_path / "out")]
        proc = subprocess.run(
            [*run, "--tenant", "export-cli", "--since", "2020-01-01"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(tmp_path / "out" / "lines.tsv")
        assert "1 lines of 1 pages in 1 jobs" in proc.stderr
        assert [t for _, t in read_lines_tsv(tmp_path / "out")] == ["Dear Sirs,"]
        proc = subprocess.run(
            [*run, "--tenant", "nobody"], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1 and "no tenant 'nobody'" in proc.stderr
    finally:
        with sessions.begin() as s:
            for t in s.scalars(select(Tenant).where(Tenant.name == "export-cli")):
                s.delete(t)
