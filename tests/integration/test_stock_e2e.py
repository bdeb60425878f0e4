"""A stock-shaped TrOCR model through the real worker, API, PostgreSQL and Redis, and a
worker whose model cannot read refusing to start."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import Engine, select

from htrq.models import Page
from htrq.settings import Settings
from tests.images import page_png
from tests.integration.test_exports_api import valid
from tests.pdfs import text_pdf
from tests.services import Processes, poll_job, service_env

pytestmark = pytest.mark.slow


def _line_png() -> bytes:
    im = Image.new("L", (900, 30), 255)
    ImageDraw.Draw(im).text((4, 8), "a line far wider than a square input " * 3, fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_stock_shape_reads_every_page_and_exports_every_format(
    processes: Processes, settings: Settings, stock_model: Path, engine: Engine
) -> None:
    """Line, page and PDF jobs with a trocr-base- or trocr-small-shaped model all succeed,
    and every export of the job is well formed (XML valid against the schemas)."""
    settings = settings.model_copy(update={"model": str(stock_model), "num_beams": 2})
    env = service_env(settings)
    processes.worker("stock", env)
    url = processes.api(env)
    jobs = []
    for mode, files in (
        ("line", [("files", ("wide-line.png", _line_png(), "image/png"))]),
        (
            "page",
            [
                ("files", ("page.png", page_png("Dear Sir", size=(320, 64)), "image/png")),
                ("files", ("letter.pdf", text_pdf([(300, 200)], lines=2), "application/pdf")),
            ],
        ),
    ):
        r = httpx.post(f"{url}/v1/jobs", files=files, data={"mode": mode}, timeout=30)
        assert r.status_code == 201, r.text
        jobs.append(r.json()["id"])
    for job_id in jobs:
        job = poll_job(url, job_id)
        errors = [
            httpx.get(f"{url}/v1/jobs/{job_id}/pages/{p['index']}").json()["error"]
            for p in job["pages"]
        ]
        assert job["status"] == "succeeded", errors
    with engine.connect() as conn:
        pages = conn.execute(select(Page).where(Page.job_id.in_(jobs))).all()
    assert len(pages) == 3 and {p.model for p in pages} == {str(stock_model)}

    job_id = jobs[1]
    pages_json = json.loads(httpx.get(f"{url}/v1/jobs/{job_id}/export?format=json").text)
    assert [p["status"] for p in pages_json["pages"]] == ["succeeded", "succeeded"]
    assert len(pages_json["pages"][1]["lines"]) == 2  # the PDF's two lines
    txt = httpx.get(f"{url}/v1/jobs/{job_id}/export?format=txt").text
    assert txt.split("\f") == [p["text"] for p in pages_json["pages"]]
    for fmt, xsd in (("alto", "alto-4-4.local.xsd"), ("page", "pagecontent-2019-07-15.xsd")):
        r = httpx.get(f"{url}/v1/jobs/{job_id}/export", params={"format": fmt}, timeout=30)
        assert r.status_code == 200
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            assert len(zf.namelist()) == 2
            assert all(valid(zf.read(n), xsd) for n in zf.namelist())
