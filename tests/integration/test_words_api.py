"""Words through the real API app and PostgreSQL: the page resource's words, re-fitted to a
correction, estimated for lines stored without them, and placed one by one in the
searchable PDF (checked with poppler's ``pdftotext -bbox``)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from htrq.exports.pdf import DEFAULT_DPI
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import default_tenant
from tests.finished import LETTER_LINES, finished_letter


def stored(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Words as stored: without the resource's review flag."""
    return [{k: v for k, v in w.items() if k != "needs_review"} for w in words]


@pytest.fixture
def client(
    settings: Settings, broker_url: str, sessions: sessionmaker[Session]
) -> Iterator[TestClient]:
    """The service's app reading through the test's rolled-back session."""
    app = create_app(settings)
    app.state.sessions = sessions
    with TestClient(app) as c:
        yield c


@pytest.fixture
def job_id(settings: Settings, sessions: sessionmaker[Session]) -> uuid.UUID:
    """The letter: two lines with aligned words, one stored without words."""
    tenant = default_tenant(sessions)
    return finished_letter(sessions, open_store(settings), settings, tenant)


def test_each_line_has_its_words_with_boxes_and_confidences(
    client: TestClient, job_id: uuid.UUID
) -> None:
    """Stored words come back as stored, with box_source ctc; a line stored without words
    gets them estimated inside its box; every line's words joined give its text."""
    page = client.get(f"/v1/jobs/{job_id}/pages/0").json()
    first, second, third = page["lines"]
    assert stored(first["words"]) == LETTER_LINES[0].words and first["box_source"] == "ctc"
    assert [w["confidence"] for w in second["words"]] == [0.9, 0.31]
    assert third["box_source"] == "estimate"
    x0, y0, x1, y1 = third["bbox"]
    for w in third["words"]:
        assert x0 <= w["box"][0] <= w["box"][2] <= x1 and (w["box"][1], w["box"][3]) == (y0, y1)
        assert w["confidence"] == third["confidence"]
    for line in page["lines"]:
        assert " ".join(w["text"] for w in line["words"]) == line["text"]
    # Only inside a doubtful line is a word under the threshold doubtful; estimated words
    # have their line's confidence, so all of a doubtful line's are.
    assert [w["needs_review"] for ln in page["lines"] for w in ln["words"]] == [
        False, False, False, True, True, True,
    ]  # fmt: skip


def test_a_correction_refits_the_words_and_keeps_unchanged_boxes(
    client: TestClient, job_id: uuid.UUID
) -> None:
    """A corrected word takes the box of the word it replaced; the words follow the
    correction; taking the correction back brings the model's words back."""
    url = f"/v1/jobs/{job_id}/pages/0/lines/1"
    line = client.patch(url, json={"text": "yours truly"}).json()
    assert [w["text"] for w in line["words"]] == ["yours", "truly"]
    assert stored(line["words"])[0] == LETTER_LINES[1].words[0]  # type: ignore[index]
    assert line["words"][1]["box"] == [124, 86, 210, 114] and line["words"][1]["confidence"] == 1
    assert line["box_source"] == "ctc"
    line = client.patch(url, json={"text": "yours very truly"}).json()
    assert [w["text"] for w in line["words"]] == ["yours", "very", "truly"]
    assert line["words"][1]["box"][0] >= 110 and line["words"][2]["box"][2] <= 210
    page = client.get(f"/v1/jobs/{job_id}/pages/0").json()
    assert page["lines"][1]["words"] == line["words"]
    line = client.patch(url, json={"text": "yours truIy"}).json()  # the model's own reading
    assert stored(line["words"]) == LETTER_LINES[1].words


def test_exports_carry_the_words(client: TestClient, job_id: uuid.UUID) -> None:
    """ALTO has a String per word with the API's boxes; JSON has the resource's words."""
    base = f"/v1/jobs/{job_id}/pages/0/export"
    root = etree.fromstring(client.get(base, params={"format": "alto"}).content)
    ns = {"a": "http://www.loc.gov/standards/alto/ns-v4#"}
    strings = root.findall(".//a:TextLine", ns)[0].findall("a:String", ns)
    assert [(s.get("CONTENT"), s.get("HPOS"), s.get("WIDTH")) for s in strings] == [
        ("Dear", "24", "56"),
        ("Sir,", "92", "58"),
    ]
    body = client.get(base, params={"format": "json"}).json()
    page = client.get(f"/v1/jobs/{job_id}/pages/0").json()
    assert [ln["words"] for ln in body["lines"]] == [stored(ln["words"]) for ln in page["lines"]]


@pytest.mark.slow  # starts pdftotext
@pytest.mark.skipif(
    shutil.which("pdftotext") is None,
    reason="pdftotext (poppler-utils) is not installed; scripts/pdf-tools installs it",
)
def test_the_searchable_pdf_puts_each_word_on_its_box(
    client: TestClient, job_id: uuid.UUID, tmp_path: Path
) -> None:
    """pdftotext -bbox finds every word of the page where the API says it is, within 2 px."""
    pdf = client.get(f"/v1/jobs/{job_id}/export", params={"format": "pdf"})
    assert pdf.status_code == 200
    (tmp_path / "job.pdf").write_bytes(pdf.content)
    subprocess.run(
        ["pdftotext", "-bbox", str(tmp_path / "job.pdf"), str(tmp_path / "job.html")], check=True
    )
    html = etree.parse(str(tmp_path / "job.html"), etree.HTMLParser())
    # The letter has no resolution of its own: the PDF draws it at DEFAULT_DPI.
    scale = DEFAULT_DPI / 72.0
    found = [
        (el.text, [float(el.get(k, "nan")) * scale for k in ("xmin", "ymin", "xmax", "ymax")])
        for el in html.iter("word")
    ]
    page = client.get(f"/v1/jobs/{job_id}/pages/0").json()
    expected = [(w["text"], w["box"]) for ln in page["lines"] for w in ln["words"]]
    assert [t for t, _ in found] == [t for t, _ in expected]
    for (_, got), (text, want) in zip(found, expected, strict=True):
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 2.0, (text, got, want)
