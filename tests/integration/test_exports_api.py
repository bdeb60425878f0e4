"""Export routes over real database rows: formats, job-level forms, 404 and 409."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq.models import Job, Line, Page
from htrq.settings import Settings
from htrq.tenants import default_tenant

SCHEMAS = Path(__file__).parents[1] / "resources" / "schemas"


def valid(xml: bytes, xsd: str) -> bool:
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / xsd)))
    ok = schema.validate(etree.fromstring(xml))
    assert ok, schema.error_log
    return ok


@pytest.fixture
def client(
    settings: Settings, broker_url: str, sessions: sessionmaker[Session]
) -> Iterator[TestClient]:
    """The service's own app (``create_app``), reading through the test's rolled-back
    session so that the rows below vanish with the test."""
    app = create_app(settings)
    app.state.sessions = sessions
    with TestClient(app) as c:
        yield c


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> uuid.UUID:
    """A job of three pages from one PDF: succeeded (two lines), failed, queued."""
    tenant = default_tenant(sessions)
    with sessions() as s:
        job = Job(tenant_id=tenant, fingerprint="f" * 64, mode="page")
        s.add(job)
        s.flush()
        common = {"job_id": job.id, "blob_key": "b", "filename": "letter.pdf", "attempt_limit": 3}
        done = Page(
            index=0, frame=0, status="succeeded", text="Dear Sir,\nyours truly", confidence=0.8,
            **common,
        )  # fmt: skip
        failed = Page(
            index=1, frame=1, status="failed", error_code="invalid_pdf",
            error_message="page 1 could not be rendered", **common,
        )  # fmt: skip
        queued = Page(index=2, frame=2, **common)
        s.add_all([done, failed, queued])
        s.flush()
        for i, (text, conf, box) in enumerate(
            [("Dear Sir,", 0.9, (10, 20, 400, 60)), ("yours truly", 0.7, (12, 80, 500, 130))]
        ):
            x0, y0, x1, y1 = box
            s.add(
                Line(
                    page_id=done.id, index=i, text=text, confidence=conf, x0=x0, y0=y0, x1=x1, y1=y1
                )
            )
        s.commit()
        return job.id


def test_page_exports_in_every_format(client: TestClient, job_id: uuid.UUID) -> None:
    """A succeeded page exports as txt, json, valid ALTO and valid PAGE XML."""
    base = f"/v1/jobs/{job_id}/pages/0/export"
    r = client.get(base)  # txt by default
    assert r.status_code == 200 and r.text == "Dear Sir,\nyours truly"
    assert r.headers["content-type"].startswith("text/plain")
    body = client.get(base, params={"format": "json"}).json()
    assert [ln["bbox"] for ln in body["lines"]] == [[10, 20, 400, 60], [12, 80, 500, 130]]
    assert (body["filename"], body["frame"]) == ("letter.pdf", 0)
    assert [ln["needs_review"] for ln in body["lines"]] == [False, True]  # 0.9, 0.7 vs 0.75
    r = client.get(base, params={"format": "alto"})
    assert r.headers["content-type"].startswith("application/xml")
    assert valid(r.content, "alto-4-4.local.xsd")
    assert b'WC="0.9000"' in r.content
    assert valid(client.get(base, params={"format": "page"}).content, "pagecontent-2019-07-15.xsd")


def test_page_export_of_unfinished_or_unknown_pages(client: TestClient, job_id: uuid.UUID) -> None:
    """Failed and queued pages answer 409; unknown pages, jobs and formats 404/422."""
    for index in (1, 2):
        r = client.get(f"/v1/jobs/{job_id}/pages/{index}/export")
        assert r.status_code == 409 and r.json()["error"]["code"] == "page_not_succeeded"
    assert client.get(f"/v1/jobs/{job_id}/pages/7/export").status_code == 404
    assert client.get(f"/v1/jobs/{uuid.uuid4()}/export").status_code == 404
    assert client.get("/v1/jobs/not-a-uuid/export").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/export", params={"format": "hocr"}).status_code == 422


def test_an_unfinished_job_has_no_export_yet(client: TestClient, job_id: uuid.UUID) -> None:
    """While a page is queued the job export answers 409 job_not_finished, in every format."""
    for fmt in ("txt", "json", "alto", "page"):
        r = client.get(f"/v1/jobs/{job_id}/export", params={"format": fmt})
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished", fmt


def test_job_exports_hold_every_page_in_order(
    client: TestClient, job_id: uuid.UUID, sessions: sessionmaker[Session]
) -> None:
    """Once finished: txt has a form feed between pages (a failed page is empty); json
    carries states and errors; XML is a zip of valid files of the succeeded pages only."""
    with sessions() as s:
        s.execute(
            update(Page)
            .where(Page.job_id == job_id, Page.index == 2)
            .values(status="failed", error_code="invalid_pdf", error_message="x")
        )
        s.commit()
    r = client.get(f"/v1/jobs/{job_id}/export")
    assert r.text.split("\f") == ["Dear Sir,\nyours truly", "", ""]
    pages = client.get(f"/v1/jobs/{job_id}/export", params={"format": "json"}).json()["pages"]
    assert [(p["index"], p["status"]) for p in pages] == [
        (0, "succeeded"),
        (1, "failed"),
        (2, "failed"),
    ]
    assert pages[1]["error"]["code"] == "invalid_pdf"
    assert [(p["filename"], p["frame"]) for p in pages] == [
        ("letter.pdf", 0),
        ("letter.pdf", 1),
        ("letter.pdf", 2),
    ]
    for fmt, xsd in (("alto", "alto-4-4.local.xsd"), ("page", "pagecontent-2019-07-15.xsd")):
        r = client.get(f"/v1/jobs/{job_id}/export", params={"format": fmt})
        assert r.headers["content-type"] == "application/zip"
        assert r.headers["content-disposition"].endswith(f'.{fmt}.zip"')
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            assert zf.namelist() == ["page-0001.xml"]  # the failed pages are left out
            assert all(valid(zf.read(n), xsd) for n in zf.namelist())
    assert (
        json.loads(client.get(f"/v1/jobs/{job_id}/pages/0/export?format=json").text)["index"] == 0
    )


def test_a_colour_pdf_keeps_its_colour_for_people(
    client: TestClient, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A PDF page with a red stamp: the page image (what the review page shows) and the
    searchable PDF show it red; the worker's reading stays grey."""
    import pypdfium2 as pdfium
    from PIL import Image, ImageDraw

    from htrq.inputs import render_page
    from htrq.storage import open_store
    from tests.finished import LETTER_LINES, finish, submit
    from tests.pdfs import pdf_of

    scan = Image.new("RGB", (480, 200), "white")
    ImageDraw.Draw(scan).rectangle((300, 20, 460, 180), fill=(200, 20, 20))
    data = pdf_of([scan], resolution=72.0)
    settings = settings.model_copy(update={"pdf_dpi": 72})
    client.app.state.settings = settings  # type: ignore[attr-defined]
    job = submit(
        sessions, open_store(settings), settings, default_tenant(sessions), [("s.pdf", data)]
    )
    finish(sessions, job, 0, LETTER_LINES, (480, 200))

    def red(im: Image.Image) -> bool:
        r, g, b = im.convert("RGB").getpixel((380, 100))
        return r > 150 and g < 80 and b < 80

    image = client.get(f"/v1/jobs/{job}/pages/0/image")
    assert image.status_code == 200 and red(Image.open(io.BytesIO(image.content)))
    export = client.get(f"/v1/jobs/{job}/export", params={"format": "pdf"})
    assert export.status_code == 200
    pdf = pdfium.PdfDocument(export.content)
    page = pdf[0]
    rendered = page.render(scale=480 / page.get_width()).to_pil()
    assert red(rendered)
    assert render_page(data, 0, dpi=72).mode == "L"  # what the worker reads
