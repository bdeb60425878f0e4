"""Corrections through the real API app and PostgreSQL: stored beside the model's reading,
shown in the page resource and in every export, refused when they are not one line."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq.models import Line, Page
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import default_tenant
from tests.finished import Read, finish, finished_letter, letter_png, submit
from tests.pdfs import text_pdf

SCHEMAS = Path(__file__).parents[1] / "resources" / "schemas"
ALTO = "{http://www.loc.gov/standards/alto/ns-v4#}"
PAGE = "{http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15}"


def valid(xml: bytes, xsd: str) -> etree._Element:
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / xsd)))
    root = etree.fromstring(xml)
    assert schema.validate(root), schema.error_log
    return root


@pytest.fixture
def client(
    settings: Settings, broker_url: str, sessions: sessionmaker[Session]
) -> Iterator[TestClient]:
    """The service's app reading through the test's rolled-back session."""
    app = create_app(settings)
    app.state.sessions = sessions
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def job_id(settings: Settings, sessions: sessionmaker[Session]) -> uuid.UUID:
    """A job whose page 0 succeeded with three lines (line 1 doubtful) and page 1 is queued."""
    tenant = default_tenant(sessions)
    return finished_letter(sessions, open_store(settings), settings, tenant, queued_pages=1)


def _line(sessions: sessionmaker[Session], job_id: uuid.UUID, index: int) -> Line:
    with sessions() as s:
        return s.scalars(
            select(Line)
            .join(Page, Line.page_id == Page.id)
            .where(Page.job_id == job_id, Page.index == 0, Line.index == index)
        ).one()


def test_a_correction_is_stored_beside_the_models_reading(
    client: TestClient, job_id: uuid.UUID, sessions: sessionmaker[Session]
) -> None:
    """PATCH text keeps the model's reading, stores the correction with its time, and the
    line and page show the corrected text; the line no longer needs review."""
    before = client.get(f"/v1/jobs/{job_id}/pages/0").json()
    assert before["lines_to_review"] == 2
    assert before["lines"][1]["needs_review"] and not before["lines"][1]["corrected"]

    r = client.patch(f"/v1/jobs/{job_id}/pages/0/lines/1", json={"text": "yours truly"})
    assert r.status_code == 200, r.text
    line = r.json()
    assert (line["text"], line["model_text"]) == ("yours truly", "yours truIy")
    assert (line["corrected"], line["reviewed"], line["needs_review"]) == (True, True, False)
    assert line["confidence"] == 0.55  # the model's, as it was

    row = _line(sessions, job_id, 1)
    assert (row.text, row.correction) == ("yours truIy", "yours truly")
    assert row.corrected_at is not None and row.reviewed_at == row.corrected_at

    page = client.get(f"/v1/jobs/{job_id}/pages/0").json()
    assert page["text"] == "Dear Sir,\nyours truly\nJ. Smith"
    assert page["lines"][1] == line
    assert page["lines_to_review"] == 1


def test_reviewed_marks_a_line_right_as_it_reads_and_false_takes_it_back(
    client: TestClient, job_id: uuid.UUID, sessions: sessionmaker[Session]
) -> None:
    """{"reviewed": true} sets reviewed_at without a correction and drops the line from
    lines_to_review; {"reviewed": false} takes a correction and the mark back."""
    url = f"/v1/jobs/{job_id}/pages/0/lines/2"
    line = client.patch(url, json={"reviewed": True}).json()
    assert (line["text"], line["corrected"], line["reviewed"]) == ("J. Smith", False, True)
    assert line["needs_review"] is False and line["reviewed_at"] is not None
    assert _line(sessions, job_id, 2).correction is None
    assert client.get(f"/v1/jobs/{job_id}/pages/0").json()["lines_to_review"] == 1

    client.patch(url, json={"text": "J. Smyth"})
    line = client.patch(url, json={"reviewed": False}).json()
    assert (line["text"], line["corrected"], line["reviewed"], line["needs_review"]) == (
        "J. Smith",
        False,
        False,
        True,
    )
    row = _line(sessions, job_id, 2)
    assert (row.correction, row.corrected_at, row.reviewed_at) == (None, None, None)


def test_the_models_own_reading_takes_a_correction_back(
    client: TestClient, job_id: uuid.UUID
) -> None:
    """Sending the model's reading as the text leaves no correction, only the review."""
    url = f"/v1/jobs/{job_id}/pages/0/lines/1"
    client.patch(url, json={"text": "yours truly"})
    line = client.patch(url, json={"text": "yours truIy"}).json()
    assert (line["corrected"], line["reviewed"], line["text"]) == (False, True, "yours truIy")


def test_every_export_carries_the_corrected_text(
    client: TestClient, job_id: uuid.UUID, sessions: sessionmaker[Session]
) -> None:
    """txt, json, ALTO and PAGE of the page and of the job hold the correction (valid XML,
    no model confidence on the corrected line); json keeps the model's reading too."""
    client.patch(f"/v1/jobs/{job_id}/pages/0/lines/1", json={"text": "yours truly"})
    base = f"/v1/jobs/{job_id}/pages/0/export"
    assert client.get(base).text == "Dear Sir,\nyours truly\nJ. Smith"

    body = client.get(base, params={"format": "json"}).json()
    assert body["text"] == "Dear Sir,\nyours truly\nJ. Smith"
    assert [(ln["text"], ln["model_text"], ln["corrected"]) for ln in body["lines"]] == [
        ("Dear Sir,", "Dear Sir,", False),
        ("yours truly", "yours truIy", True),
        ("J. Smith", "J. Smith", False),
    ]
    assert [ln["needs_review"] for ln in body["lines"]] == [False, False, True]

    alto = valid(client.get(base, params={"format": "alto"}).content, "alto-4-4.local.xsd")
    strings = alto.findall(f".//{ALTO}String")
    # A String per word: the words' confidences, none on the corrected line's words (a
    # line stored without words has them estimated, each with the line's confidence).
    assert [s.get("CONTENT") for s in strings] == ["Dear", "Sir,", "yours", "truly", "J.", "Smith"]
    assert [s.get("WC") for s in strings] == ["0.9800", "0.9600", None, None, "0.6200", "0.6200"]

    page = valid(client.get(base, params={"format": "page"}).content, "pagecontent-2019-07-15.xsd")
    texts = [u.text for u in page.findall(f".//{PAGE}TextLine/{PAGE}TextEquiv/{PAGE}Unicode")]
    assert texts == ["Dear Sir,", "yours truly", "J. Smith"]

    # The job exports need every page finished: finish the queued page 1 first.
    finish(sessions, job_id, 1, [Read("Dear Sir,", 0.97, (20, 20, 200, 60))], (480, 200))
    job_txt = client.get(f"/v1/jobs/{job_id}/export").text
    assert job_txt.split("\f") == ["Dear Sir,\nyours truly\nJ. Smith", "Dear Sir,"]
    pages = client.get(f"/v1/jobs/{job_id}/export", params={"format": "json"}).json()["pages"]
    assert pages[0]["lines"][1]["text"] == "yours truly"
    for fmt in ("alto", "page"):
        r = client.get(f"/v1/jobs/{job_id}/export", params={"format": fmt})
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            xml = zf.read("page-0001.xml")  # ALTO has the words apart, PAGE the line too
            assert b'"truly"' in xml or b"yours truly" in xml
            assert b"truIy" not in xml


def test_corrections_of_unfinished_or_unknown_lines(client: TestClient, job_id: uuid.UUID) -> None:
    """A queued page answers 409 page_not_succeeded; unknown lines, pages and jobs 404."""
    r = client.patch(f"/v1/jobs/{job_id}/pages/1/lines/0", json={"text": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "page_not_succeeded"
    for path in (
        f"/v1/jobs/{job_id}/pages/0/lines/3",
        f"/v1/jobs/{job_id}/pages/0/lines/-1",
        f"/v1/jobs/{job_id}/pages/0/lines/99999999999",
        f"/v1/jobs/{job_id}/pages/5/lines/0",
        f"/v1/jobs/{uuid.uuid4()}/pages/0/lines/0",
        "/v1/jobs/not-a-job/pages/0/lines/0",
    ):
        r = client.patch(path, json={"reviewed": True})
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"text": "two\nlines"},
        {"text": "carriage\rreturn"},
        {"text": "separator\u2028inside"},
        {"text": "x" * 1001},
        {"text": "ok", "reviewed": False},
        {"text": "ok", "confidence": 1},
        {"text": 7},
        {"reviewed": "maybe"},
    ],
)
def test_a_correction_is_one_line_of_text(
    client: TestClient, job_id: uuid.UUID, sessions: sessionmaker[Session], body: dict
) -> None:
    """Line breaks, over-long text, contradictory bodies, unknown fields and wrong types
    answer 422 invalid_request as JSON, and store nothing."""
    r = client.patch(f"/v1/jobs/{job_id}/pages/0/lines/1", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]
    row = _line(sessions, job_id, 1)
    assert (row.correction, row.reviewed_at) == (None, None)


@pytest.mark.parametrize("body", [{}, {"text": None}, {"reviewed": None}])
def test_a_patch_with_nothing_to_change_answers_the_line_as_it_is(
    client: TestClient, job_id: uuid.UUID, sessions: sessionmaker[Session], body: dict
) -> None:
    """An empty PATCH (schema-valid: both fields are optional) changes nothing and answers
    200 with the line, as the OpenAPI document promises."""
    r = client.patch(f"/v1/jobs/{job_id}/pages/0/lines/1", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["index"] == 1 and not r.json()["corrected"] and not r.json()["reviewed"]
    row = _line(sessions, job_id, 1)
    assert (row.correction, row.reviewed_at) == (None, None)


def test_control_characters_are_removed_and_text_is_nfc(
    client: TestClient, job_id: uuid.UUID
) -> None:
    """A pasted tab or NUL goes, surrounding spaces go, combining accents are composed."""
    r = client.patch(
        f"/v1/jobs/{job_id}/pages/0/lines/0", json={"text": "  Cher\tMonsieur\x00 Re\u0301mi  "}
    )
    assert r.status_code == 200
    assert r.json()["text"] == "CherMonsieur R\u00e9mi"


def test_the_page_image_is_served_at_the_stored_size(
    client: TestClient, job_id: uuid.UUID, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A succeeded image page comes back as the PNG it was; a PDF page is rendered at its
    stored size; a queued page answers 409."""
    r = client.get(f"/v1/jobs/{job_id}/pages/0/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im, Image.open(io.BytesIO(letter_png())) as up:
        assert im.size == (480, 200) and im.tobytes() == up.tobytes()
    r = client.get(f"/v1/jobs/{job_id}/pages/1/image")
    assert r.status_code == 409 and r.json()["error"]["code"] == "page_not_succeeded"
    assert client.get(f"/v1/jobs/{job_id}/pages/4/image").status_code == 404

    tenant = default_tenant(sessions)
    pdf = text_pdf([(200, 100)] * 2)
    pdf_job = submit(sessions, open_store(settings), settings, tenant, [("l.pdf", pdf)])
    # Read when HTRQ_PDF_DPI was 150 (417 x 208 pixels); rendered now at 300, the image is
    # brought to the size the line coordinates refer to.
    finish(sessions, pdf_job, 1, [Read("Dear Sir", 0.9, (15, 20, 300, 45))], (417, 208))
    r = client.get(f"/v1/jobs/{pdf_job}/pages/1/image")
    assert r.status_code == 200
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (417, 208)
        assert im.convert("L").getextrema()[0] < 100  # the PDF's text is on it
