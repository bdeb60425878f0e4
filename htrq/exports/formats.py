"""Page results as plain text, JSON, ALTO 4 and PAGE XML 2019 (pure functions, no ORM).

Coordinates are page-image pixels, origin top left. A line's words (``htrq.words``) are ALTO
``String`` elements with ``SP`` between them and PAGE ``Word`` elements, each with its box
and confidence (``String/@WC``, ``TextEquiv/@conf``); the line's confidence goes into PAGE's
line ``TextEquiv/@conf``. A line a person corrected is written with their
text, and without the model's confidence, which was the model's in another text.

Whole jobs: ``txt`` is every page's text with a form feed (U+000C) between pages, the plain
text convention for page breaks (pdftotext, lpr); ``json`` is ``{"pages": [...]}``; ``alto``
and ``page`` are a zip with one XML file per page (``page-0001.xml`` ...). A PAGE file holds
exactly one page by schema, and one ALTO file per page image is what HTR tools (eScriptorium,
Transkribus, kraken) exchange, so both XML formats use the same zip layout.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from htrq.text import xml_safe
from htrq.words import Word, served_words

ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
ALTO_SCHEMA = "http://www.loc.gov/standards/alto/v4/alto-4-4.xsd"
PAGE_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
PAGE_SCHEMA = f"{PAGE_NS}/pagecontent.xsd"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

#: Export formats and the media type each is served with; job-level XML is a zip.
FORMATS = {
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "alto": "application/xml",
    "page": "application/xml",
    "pdf": "application/pdf",  #: rendered by htrq.exports.pdf, which needs the page images
}

Point = tuple[int, int]


@dataclass(frozen=True)
class LineResult:
    text: str  #: what the line says: a person's correction where there is one
    confidence: float | None  #: 0..1, None when the recognizer gave none
    bbox: tuple[int, int, int, int]  #: x0, y0, x1, y1
    polygon: Sequence[Point] | None = None
    baseline: Sequence[Point] | None = None
    needs_review: bool | None = None  #: below the review threshold (None: not judged)
    model_text: str | None = None  #: the model's reading (None: the same as ``text``)
    corrected: bool = False  #: a person corrected the model's reading
    reviewed: bool = False  #: a person checked the line
    #: The words of ``text`` with boxes in page pixels (``htrq.words``); empty: none known.
    words: Sequence[Word] = ()
    box_source: str = "estimate"  #: ``ctc`` or ``estimate`` (``htrq.words``)

    @property
    def model_confidence(self) -> float | None:
        """The confidence to write beside ``text``: none once a person changed the text."""
        return None if self.corrected else self.confidence


@dataclass(frozen=True)
class Provenance:
    """What read a page: the model, the digest of its weights, the decoding settings and
    the htrq version (written into ALTO ``Processing`` and PAGE ``MetadataItem``)."""

    model: str | None
    model_sha256: str | None
    decoding: Mapping[str, Any] | None
    htrq_version: str | None
    #: The tenant's own model that read it (``/v1/models``), if one did.
    model_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_sha256": self.model_sha256,
            "model_id": self.model_id,
            "decoding": dict(self.decoding) if self.decoding else None,
            "htrq_version": self.htrq_version,
        }


@dataclass(frozen=True)
class PageResult:
    index: int  #: position in the job, from 0
    width: int  #: page image size in pixels
    height: int
    image_name: str  #: file the coordinates refer to (the upload's name, ``#frame`` appended)
    lines: Sequence[LineResult] = field(default_factory=tuple)
    confidence: float | None = None  #: page confidence, 0..1
    status: str = "succeeded"
    error: dict[str, str] | None = None  #: ``{"code", "message"}`` of a failed page
    filename: str | None = None  #: the upload's name (``image_name`` adds the frame)
    frame: int = 0
    provenance: Provenance | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


def render_page_export(page: PageResult, fmt: str) -> bytes:
    """One page in ``fmt`` (see :data:`FORMATS`) as bytes."""
    if fmt == "txt":
        return page.text.encode()
    if fmt == "json":
        return json.dumps(page_json(page), ensure_ascii=False).encode()
    if fmt == "alto":
        return alto(page)
    if fmt == "page":
        return page_xml(page)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render_job_export(pages: Sequence[PageResult], fmt: str) -> tuple[bytes, str, str]:
    """A whole job in ``fmt``: ``(body, media type, file extension)``."""
    if fmt == "txt":
        return "\f".join(p.text for p in pages).encode(), FORMATS["txt"], "txt"
    if fmt == "json":
        body = {"pages": [page_json(p) for p in pages]}
        return json.dumps(body, ensure_ascii=False).encode(), FORMATS["json"], "json"
    if fmt in ("alto", "page"):
        # A page that failed has no text and no size to describe: it is left out rather
        # than written as a blank page (its index and error are in the json export).
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in pages:
                if p.status == "succeeded":
                    zf.writestr(f"page-{p.index + 1:04d}.xml", render_page_export(p, fmt))
        return buf.getvalue(), "application/zip", "zip"
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def page_json(page: PageResult) -> dict[str, Any]:
    """The page as the API's page resource names things (``filename``, ``frame``, lines with
    ``bbox``, ``polygon``, ``baseline``, ``needs_review``, ``model_text``, ``corrected``,
    ``reviewed``), plus its provenance."""
    return {
        "index": page.index,
        "filename": page.filename,
        "frame": page.frame,
        "width": page.width,
        "height": page.height,
        "status": page.status,
        "text": page.text,
        "confidence": page.confidence,
        "error": page.error,
        "lines": [
            {
                "text": ln.text,
                "confidence": ln.confidence,
                "bbox": list(ln.bbox),
                "polygon": [list(p) for p in ln.polygon] if ln.polygon else None,
                "baseline": [list(p) for p in ln.baseline] if ln.baseline else None,
                "needs_review": ln.needs_review,
                "model_text": ln.model_text if ln.model_text is not None else ln.text,
                "corrected": ln.corrected,
                "reviewed": ln.reviewed,
                "words": [dict(w) for w in ln.words],
                "box_source": ln.box_source,
            }
            for ln in page.lines
        ],
        "provenance": page.provenance.as_dict() if page.provenance else None,
    }


def alto(page: PageResult) -> bytes:
    """ALTO 4.4: one TextBlock holding the page's lines, one String per line."""
    ET.register_namespace("", ALTO_NS)
    ET.register_namespace("xsi", XSI_NS)
    a = _ns(ALTO_NS)
    root = ET.Element(a("alto"), {f"{{{XSI_NS}}}schemaLocation": f"{ALTO_NS} {ALTO_SCHEMA}"})
    desc = ET.SubElement(root, a("Description"))
    ET.SubElement(desc, a("MeasurementUnit")).text = "pixel"
    src = ET.SubElement(desc, a("sourceImageInformation"))
    ET.SubElement(src, a("fileName")).text = page.image_name
    proc = ET.SubElement(desc, a("Processing"), ID="htrq_0")
    prov = page.provenance
    if prov and prov.model:
        ET.SubElement(proc, a("processingStepSettings")).text = _settings_text(prov)
    sw = ET.SubElement(proc, a("processingSoftware"))
    ET.SubElement(sw, a("softwareName")).text = "htrq"
    if prov and prov.htrq_version:
        ET.SubElement(sw, a("softwareVersion")).text = prov.htrq_version
    layout = ET.SubElement(root, a("Layout"))
    pg = ET.SubElement(
        layout,
        a("Page"),
        ID=f"p{page.index}",
        PHYSICAL_IMG_NR=str(page.index + 1),
        WIDTH=str(page.width),
        HEIGHT=str(page.height),
    )
    space = ET.SubElement(
        pg, a("PrintSpace"), HPOS="0", VPOS="0", WIDTH=str(page.width), HEIGHT=str(page.height)
    )
    if page.lines:
        block = ET.SubElement(
            space, a("TextBlock"), {"ID": f"p{page.index}_b0", **_alto_box(_union(page.lines))}
        )
        for i, ln in enumerate(page.lines):
            attrs = {"ID": f"p{page.index}_l{i}", **_alto_box(ln.bbox)}
            if ln.baseline and len(ln.baseline) >= 2:
                attrs["BASELINE"] = _points(ln.baseline, page)
            line = ET.SubElement(block, a("TextLine"), attrs)
            if ln.polygon and len(ln.polygon) >= 3:
                shape = ET.SubElement(line, a("Shape"))
                ET.SubElement(shape, a("Polygon"), POINTS=_points(ln.polygon, page))
            _alto_words(line, a, ln, f"p{page.index}_l{i}")
    return _serialise(root)


def _alto_words(line: ET.Element, a: Any, ln: LineResult, line_id: str) -> None:
    """A String per word (WC: the word's confidence, none once a person corrected the line),
    an SP between two; a line without words, one String with its whole text."""
    words = [w for w in ln.words if w["text"]] or [
        Word(text=ln.text, box=list(ln.bbox), confidence=ln.confidence or 0.0)
    ]
    for j, w in enumerate(words):
        x0, y0, x1, y1 = w["box"]
        if j:
            prev = words[j - 1]["box"]
            gap = (prev[2], y0, max(prev[2], x0), y1)
            ET.SubElement(line, a("SP"), {"ID": f"{line_id}_sp{j}", **_alto_box(gap, height=False)})
        attrs = {"ID": f"{line_id}_s{j}", "CONTENT": w["text"], **_alto_box((x0, y0, x1, y1))}
        if ln.model_confidence is not None:
            attrs["WC"] = _conf(w["confidence"] if ln.words else ln.model_confidence)
        ET.SubElement(line, a("String"), attrs)


def page_xml(page: PageResult, *, created: datetime | None = None) -> bytes:
    """PAGE XML 2019-07-15: one TextRegion holding the page's lines, text per line."""
    ET.register_namespace("", PAGE_NS)
    ET.register_namespace("xsi", XSI_NS)
    p = _ns(PAGE_NS)
    root = ET.Element(p("PcGts"), {f"{{{XSI_NS}}}schemaLocation": f"{PAGE_NS} {PAGE_SCHEMA}"})
    meta = ET.SubElement(root, p("Metadata"))
    stamp = (created or datetime.now(UTC)).replace(microsecond=0).isoformat()
    ET.SubElement(meta, p("Creator")).text = "htrq"
    ET.SubElement(meta, p("Created")).text = stamp
    ET.SubElement(meta, p("LastChange")).text = stamp
    prov = page.provenance
    if prov and prov.model:
        item = ET.SubElement(
            meta,
            p("MetadataItem"),
            type="processingStep",
            name="recognition",
            value=f"htrq {prov.htrq_version or ''}".strip(),
        )
        labels = ET.SubElement(item, p("Labels"))
        for key, value in _provenance_items(prov):
            ET.SubElement(labels, p("Label"), value=value, type=key)
    pg = ET.SubElement(
        root,
        p("Page"),
        imageFilename=page.image_name,
        imageWidth=str(page.width),
        imageHeight=str(page.height),
    )
    if page.lines:
        order = ET.SubElement(pg, p("ReadingOrder"))
        group = ET.SubElement(order, p("OrderedGroup"), id=f"p{page.index}_ro")
        ET.SubElement(group, p("RegionRefIndexed"), index="0", regionRef=f"p{page.index}_r0")
        region = ET.SubElement(pg, p("TextRegion"), id=f"p{page.index}_r0", type="paragraph")
        ET.SubElement(region, p("Coords"), points=_points(_corners(_union(page.lines)), page))
        for i, ln in enumerate(page.lines):
            line = ET.SubElement(region, p("TextLine"), id=f"p{page.index}_l{i}")
            outline = ln.polygon if ln.polygon and len(ln.polygon) >= 3 else _corners(ln.bbox)
            ET.SubElement(line, p("Coords"), points=_points(outline, page))
            if ln.baseline and len(ln.baseline) >= 2:
                ET.SubElement(line, p("Baseline"), points=_points(ln.baseline, page))
            for j, w in enumerate(ln.words):
                word = ET.SubElement(line, p("Word"), id=f"p{page.index}_l{i}_w{j}")
                ET.SubElement(word, p("Coords"), points=_points(_corners(_box(w["box"])), page))
                conf = w["confidence"] if ln.model_confidence is not None else None
                _text_equiv(word, p, w["text"], conf)
            _text_equiv(line, p, ln.text, ln.model_confidence)
        corrected = any(ln.corrected for ln in page.lines)
        _text_equiv(region, p, page.text, None if corrected else page.confidence)
    return _serialise(root)


def from_rows(page: Any, lines: Sequence[Any], review_below: float | None = None) -> PageResult:
    """A stored page and its lines (``htrq.models.Page`` / ``Line`` rows) as export input.

    Page size and line outlines come from ``Page.width``/``height`` and ``Line.polygon``/
    ``baseline`` (JSON point lists) where the schema has them; with ``review_below`` each
    line says whether it needs review. A line's text is its ``correction`` where a person
    made one (``corrected``); the model's reading stays in ``model_text``.
    """
    decoding = getattr(page, "decoding", None)
    return from_resource(
        {
            "provenance": {
                "model": page.model,
                "model_sha256": getattr(page, "model_sha256", None),
                "decoding": json.loads(decoding) if decoding else None,
                "htrq_version": getattr(page, "htrq_version", None),
            }
            if getattr(page, "model", None)
            else None,
            "index": page.index,
            "filename": page.filename,
            "frame": page.frame,
            "width": getattr(page, "width", None),
            "height": getattr(page, "height", None),
            "confidence": page.confidence,
            "status": page.status,
            "error": {"code": page.error_code, "message": page.error_message or ""}
            if page.error_code
            else None,
            "lines": [_row_line(ln, review_below) for ln in lines],
        }
    )


def _row_line(ln: Any, review_below: float | None) -> dict[str, Any]:
    correction = getattr(ln, "correction", None)
    corrected = correction is not None
    reviewed = getattr(ln, "reviewed_at", None) is not None
    words, box_source = served_words(
        model_text=ln.text,
        correction=correction,
        words=getattr(ln, "words", None),
        box_source=getattr(ln, "box_source", None),
        bbox=(ln.x0, ln.y0, ln.x1, ln.y1),
        confidence=ln.confidence,
    )
    return {
        "words": words,
        "box_source": box_source,
        "text": correction if corrected else ln.text,
        "model_text": ln.text,
        "corrected": corrected,
        "reviewed": reviewed,
        "confidence": ln.confidence,
        "bbox": (ln.x0, ln.y0, ln.x1, ln.y1),
        "polygon": getattr(ln, "polygon", None),
        "baseline": getattr(ln, "baseline", None),
        "needs_review": ln.confidence < review_below and not (corrected or reviewed)
        if review_below
        else None,
    }


def from_resource(page: Mapping[str, Any]) -> PageResult:
    """The API's page resource (``GET /v1/jobs/{id}/pages/{index}`` as a dict) as export input.

    This is what ``htrq transcribe`` holds. Without ``width``/``height`` the page is taken to
    end at its lowest, rightmost line. Pages of one PDF or TIFF share a file name, so a frame
    after the first is named as ImageMagick does: ``letter.pdf[1]``.
    """
    lines = [
        LineResult(
            text=ln["text"],
            confidence=ln.get("confidence"),
            bbox=_stored_bbox(ln["bbox"]),
            polygon=_stored_points(ln.get("polygon")),
            baseline=_stored_points(ln.get("baseline")),
            needs_review=ln.get("needs_review"),
            model_text=ln.get("model_text"),
            corrected=bool(ln.get("corrected")),
            reviewed=bool(ln.get("reviewed")),
            words=[
                Word(text=w["text"], box=list(_stored_bbox(w["box"])), confidence=w["confidence"])
                for w in ln.get("words") or []
            ],
            box_source=ln.get("box_source") or "estimate",
        )
        for ln in page.get("lines") or []
    ]
    prov = page.get("provenance")
    name = page.get("filename") or f"page-{page['index'] + 1}"
    frame = page.get("frame") or 0
    error = page.get("error")
    return PageResult(
        index=page["index"],
        width=int(page.get("width") or max((ln.bbox[2] for ln in lines), default=1)),
        height=int(page.get("height") or max((ln.bbox[3] for ln in lines), default=1)),
        image_name=name if frame == 0 else f"{name}[{frame}]",
        lines=lines,
        confidence=page.get("confidence"),
        status=page.get("status", "succeeded"),
        error={"code": error["code"], "message": error.get("message", "")} if error else None,
        filename=page.get("filename"),
        frame=frame,
        provenance=Provenance(**prov) if prov else None,
    )


def _stored_bbox(value: Sequence[Any]) -> tuple[int, int, int, int]:
    """A stored box (x0, y0, x1, y1) as four ints."""
    x0, y0, x1, y1 = (int(v) for v in value)
    return x0, y0, x1, y1


def _stored_points(value: Any) -> list[tuple[int, int]] | None:
    """A stored point list (JSON text or a list of pairs) as tuples, or None."""
    if not value:
        return None
    pts = json.loads(value) if isinstance(value, str) else value
    return [(int(x), int(y)) for x, y in pts]


def _provenance_items(prov: Provenance) -> list[tuple[str, str]]:
    items = [("model", prov.model or ""), ("model_sha256", prov.model_sha256 or "")]
    items += [("model_id", prov.model_id or "")]
    items += [(f"decoding.{k}", str(v)) for k, v in (prov.decoding or {}).items()]
    return [(k, v) for k, v in items if v]


def _settings_text(prov: Provenance) -> str:
    return "; ".join(f"{k}={v}" for k, v in _provenance_items(prov))


def _text_equiv(parent: ET.Element, p: Any, text: str, conf: float | None) -> None:
    attrs = {"conf": _conf(conf)} if conf is not None else {}
    equiv = ET.SubElement(parent, p("TextEquiv"), attrs)
    ET.SubElement(equiv, p("Unicode")).text = text


def _ns(uri: str) -> Any:
    return lambda tag: f"{{{uri}}}{tag}"


def _conf(value: float) -> str:
    return f"{min(1.0, max(0.0, value)):.4f}"


def _union(lines: Sequence[LineResult]) -> tuple[int, int, int, int]:
    return (
        min(ln.bbox[0] for ln in lines),
        min(ln.bbox[1] for ln in lines),
        max(ln.bbox[2] for ln in lines),
        max(ln.bbox[3] for ln in lines),
    )


def _corners(b: tuple[int, int, int, int]) -> list[Point]:
    return [(b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3])]


def _alto_box(b: Sequence[int], *, height: bool = True) -> dict[str, str]:
    box = {"HPOS": str(b[0]), "VPOS": str(b[1]), "WIDTH": str(max(0, b[2] - b[0]))}
    if height:  # SP has no HEIGHT
        box["HEIGHT"] = str(max(0, b[3] - b[1]))
    return box


def _box(b: Sequence[int]) -> tuple[int, int, int, int]:
    return int(b[0]), int(b[1]), int(b[2]), int(b[3])


def _points(points: Sequence[Point], page: PageResult) -> str:
    # Both schemas want non-negative integers inside the page: clamp what rounding pushed out.
    return " ".join(
        f"{min(page.width, max(0, int(x)))},{min(page.height, max(0, int(y)))}" for x, y in points
    )


def _serialise(root: ET.Element) -> bytes:
    # Text from a model or a file name can hold what XML 1.0 forbids; the file must parse.
    for el in root.iter():
        if el.text:
            el.text = xml_safe(el.text)
        for key, value in el.attrib.items():
            el.attrib[key] = xml_safe(value)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
