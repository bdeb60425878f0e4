"""Exports: txt / json / ALTO 4 / PAGE 2019, validated against the official schemas."""

from __future__ import annotations

import io
import json
import zipfile
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

from htrq.exports.formats import (
    ALTO_NS,
    PAGE_NS,
    LineResult,
    PageResult,
    alto,
    from_resource,
    page_xml,
    render_job_export,
    render_page_export,
)

SCHEMAS = Path(__file__).parents[1] / "resources" / "schemas"


@cache
def schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / name)))


def validate(xml: bytes, schema_name: str) -> etree._Element:
    doc = etree.fromstring(xml)
    s = schema(schema_name)
    assert s.validate(doc), s.error_log
    return doc


def sample_page(index: int = 0, *, lines: bool = True) -> PageResult:
    return PageResult(
        index=index,
        width=1200,
        height=1600,
        image_name="letter.pdf#0",
        confidence=0.87,
        lines=(
            LineResult(
                text="Dear Dr. Jordan — <sorry> & “thanks”",
                confidence=0.91,
                bbox=(100, 120, 1100, 190),
                polygon=[(100, 130), (1100, 120), (1100, 190), (100, 185)],
                baseline=[(100, 175), (1100, 170)],
            ),
            LineResult(text="", confidence=None, bbox=(90, 220, 700, 280)),
            # Rounding pushed this outline past the page edge: must be clamped to stay valid.
            LineResult(
                text="yours truly",
                confidence=1.2,
                bbox=(-2, 300, 1201, 360),
                polygon=[(-2, 300), (1201, 300), (1201, 360), (-2, 360)],
            ),
        )
        if lines
        else (),
    )


def test_alto_validates_and_carries_text_confidence_and_geometry() -> None:
    """ALTO 4.4 output is schema-valid with one TextLine per line, WC and coordinates."""
    doc = validate(alto(sample_page()), "alto-4-4.local.xsd")
    ns = {"a": ALTO_NS}
    lines = doc.findall(".//a:TextLine", ns)
    assert len(lines) == 3
    first = lines[0]
    assert (first.get("HPOS"), first.get("VPOS"), first.get("WIDTH"), first.get("HEIGHT")) == (
        "100",
        "120",
        "1000",
        "70",
    )
    assert first.get("BASELINE") == "100,175 1100,170"
    string = first.find("a:String", ns)
    assert string is not None
    assert string.get("CONTENT") == "Dear Dr. Jordan — <sorry> & “thanks”"
    assert float(string.get("WC", "nan")) == pytest.approx(0.91)
    assert lines[1].find("a:String", ns).get("WC") is None  # no confidence, no WC
    assert lines[2].find("a:String", ns).get("WC") == "1.0000"  # clamped to the schema's range
    assert doc.findtext(".//a:fileName", namespaces=ns) == "letter.pdf#0"
    page = doc.find(".//a:Page", ns)
    assert (page.get("WIDTH"), page.get("HEIGHT")) == ("1200", "1600")


def test_page_xml_validates_and_carries_text_confidence_and_geometry() -> None:
    """PAGE 2019 output is schema-valid with Coords, Baseline and TextEquiv@conf per line."""
    doc = validate(page_xml(sample_page()), "pagecontent-2019-07-15.xsd")
    ns = {"p": PAGE_NS}
    lines = doc.findall(".//p:TextLine", ns)
    assert [ln.findtext("p:TextEquiv/p:Unicode", namespaces=ns) for ln in lines] == [
        "Dear Dr. Jordan — <sorry> & “thanks”",
        "",
        "yours truly",
    ]
    assert float(lines[0].find("p:TextEquiv", ns).get("conf")) == pytest.approx(0.91)
    assert lines[0].find("p:Coords", ns).get("points") == "100,130 1100,120 1100,190 100,185"
    assert lines[0].find("p:Baseline", ns).get("points") == "100,175 1100,170"
    # Box-only line: the box's corners become its outline.
    assert lines[1].find("p:Coords", ns).get("points") == "90,220 700,220 700,280 90,280"
    assert lines[2].find("p:Coords", ns).get("points").startswith("0,300 1200,300")
    page = doc.find("p:Page", ns)
    assert page.get("imageFilename") == "letter.pdf#0"


@pytest.mark.parametrize(
    ("fmt", "xsd"), [("alto", "alto-4-4.local.xsd"), ("page", "pagecontent-2019-07-15.xsd")]
)
def test_page_without_lines_is_still_valid(fmt: str, xsd: str) -> None:
    """A blank page exports as a valid document with no lines."""
    validate(render_page_export(sample_page(lines=False), fmt), xsd)


def test_txt_and_json_page_exports() -> None:
    """txt is the lines in order; json has the page fields and every line's geometry."""
    page = sample_page()
    assert render_page_export(page, "txt").decode() == (
        "Dear Dr. Jordan — <sorry> & “thanks”\n\nyours truly"
    )
    body = json.loads(render_page_export(page, "json"))
    assert body["width"] == 1200 and body["confidence"] == 0.87
    assert body["lines"][0]["bbox"] == [100, 120, 1100, 190]
    assert body["lines"][0]["baseline"] == [[100, 175], [1100, 170]]
    assert body["lines"][1]["polygon"] is None


def test_job_exports_keep_page_order() -> None:
    """Job-level txt separates pages by form feeds; XML formats zip one valid file per page."""
    pages = [sample_page(0), sample_page(1, lines=False), sample_page(2)]
    body, media, ext = render_job_export(pages, "txt")
    assert media.startswith("text/plain") and ext == "txt"
    assert body.decode().split("\f")[1] == ""
    assert len(body.decode().split("\f")) == 3
    body, _, _ = render_job_export(pages, "json")
    assert [p["index"] for p in json.loads(body)["pages"]] == [0, 1, 2]
    for fmt, xsd in (("alto", "alto-4-4.local.xsd"), ("page", "pagecontent-2019-07-15.xsd")):
        body, media, ext = render_job_export(pages, fmt)
        assert (media, ext) == ("application/zip", "zip")
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            names = zf.namelist()
            assert names == ["page-0001.xml", "page-0002.xml", "page-0003.xml"]
            for name in names:
                validate(zf.read(name), xsd)


def test_from_resource_takes_the_api_page_shape() -> None:
    """An API page resource (as transcribe holds it) exports with frame-named images."""
    resource = {
        "index": 1,
        "filename": "scan.tif",
        "frame": 1,
        "status": "succeeded",
        "text": "hello\nworld",
        "confidence": 0.5,
        "lines": [
            {"index": 0, "text": "hello", "confidence": 0.4, "bbox": [5, 5, 300, 40]},
            {"index": 1, "text": "world", "confidence": 0.6, "bbox": [5, 50, 280, 90]},
        ],
        "error": None,
        "attempts": 1,
    }
    page = from_resource(resource)
    assert (page.image_name, page.width, page.height, page.text) == (
        "scan.tif[1]",
        300,
        90,
        "hello\nworld",
    )
    validate(alto(page), "alto-4-4.local.xsd")
    failed = from_resource({**resource, "status": "failed", "lines": [], "error": {"code": "x"}})
    assert failed.error == {"code": "x", "message": ""}
    validate(page_xml(failed), "pagecontent-2019-07-15.xsd")


def test_unknown_format_is_refused() -> None:
    """An unknown format name raises ValueError naming the choices."""
    with pytest.raises(ValueError, match="txt, json, alto, page"):
        render_page_export(sample_page(), "hocr")


def worded_page(*, corrected: bool = False) -> PageResult:
    """One line of two words with their boxes and confidences (as the worker stores them)."""
    words = (
        {"text": "Dear", "box": [100, 120, 300, 190], "confidence": 0.95},
        {"text": "Sri", "box": [340, 125, 480, 185], "confidence": 0.41},
    )
    return PageResult(
        index=0,
        width=1200,
        height=1600,
        image_name="letter.png",
        confidence=0.7,
        lines=(
            LineResult(
                text="Dear Sri",
                confidence=0.7,
                bbox=(100, 120, 500, 190),
                words=words,  # type: ignore[arg-type]
                box_source="ctc",
                corrected=corrected,
            ),
        ),
    )


def test_alto_writes_a_string_per_word_with_spaces_between() -> None:
    """ALTO: each word a String with its own box and WC, an SP between two; schema-valid."""
    doc = validate(alto(worded_page()), "alto-4-4.local.xsd")
    ns = {"a": ALTO_NS}
    line = doc.find(".//a:TextLine", ns)
    assert [el.tag.split("}")[1] for el in line] == ["String", "SP", "String"]
    first, space, second = list(line)
    assert [first.get(k) for k in ("CONTENT", "HPOS", "VPOS", "WIDTH", "HEIGHT", "WC")] == [
        "Dear", "100", "120", "200", "70", "0.9500",
    ]  # fmt: skip
    assert (space.get("HPOS"), space.get("WIDTH")) == ("300", "40")
    assert (second.get("CONTENT"), second.get("WC")) == ("Sri", "0.4100")
    # Once a person corrected the line, the model's confidences no longer describe its words.
    doc = validate(alto(worded_page(corrected=True)), "alto-4-4.local.xsd")
    assert all(s.get("WC") is None for s in doc.findall(".//a:String", ns))


def test_page_xml_writes_a_word_per_word() -> None:
    """PAGE: a Word with Coords and TextEquiv@conf per word, before the line's TextEquiv."""
    doc = validate(page_xml(worded_page()), "pagecontent-2019-07-15.xsd")
    ns = {"p": PAGE_NS}
    words = doc.findall(".//p:TextLine/p:Word", ns)
    assert [w.findtext("p:TextEquiv/p:Unicode", namespaces=ns) for w in words] == ["Dear", "Sri"]
    assert words[0].find("p:Coords", ns).get("points") == "100,120 300,120 300,190 100,190"
    assert words[1].find("p:TextEquiv", ns).get("conf") == "0.4100"
    validate(page_xml(worded_page(corrected=True)), "pagecontent-2019-07-15.xsd")


def test_json_and_resources_carry_words() -> None:
    """JSON has each line's words and box_source; a resource's words come back in exports,
    and its txt is the text as before."""
    body = json.loads(render_page_export(worded_page(), "json"))
    assert body["lines"][0]["box_source"] == "ctc"
    assert [w["text"] for w in body["lines"][0]["words"]] == ["Dear", "Sri"]
    page = from_resource(body | {"index": 0})
    assert list(page.lines[0].words) == list(worded_page().lines[0].words)
    assert render_page_export(page, "txt") == b"Dear Sri"
