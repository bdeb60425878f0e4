"""People's corrections as training data: line crops cut as the service cuts them, and a
``lines.tsv`` that ``htrq train --lines`` reads (``htrq corrections export``).

How a crop is cut. The worker renders a page (:func:`htrq.inputs.render_stored_page`),
normalises it (:func:`worker.segmentation.preprocess.normalise_page`: deskewed in ``mode=page``,
never in ``mode=line``), finds its lines on the normalised page, cuts them with
:func:`worker.segmentation.crops.crop_lines` at ``HTRQ_LINE_MARGIN`` and stores them mapped
back onto the uploaded image (:func:`worker.segmentation.crops.to_source_frame`). Here the
page is rendered and normalised the same way (normalisation is deterministic: it finds the
same rotation again), the stored lines are mapped forward onto the normalised page
(:func:`worker.segmentation.crops.from_source_frame`) and cut with ``crop_lines`` and the
same margin. So a line is learnt as the reader saw it: on a page
that was not turned (every ``mode=line`` page, and level pages) the crop is exactly what the
reader got; on a turned page its outline went through two roundings to whole pixels, and the
crop may differ by a pixel at its edges (a turned line stored without an outline is cut along
its box turned back, masked outside it). A PDF page read at another ``HTRQ_PDF_DPI`` than now
is brought back to its stored size before it is normalised.

Which lines. Those a person corrected (their correction is the text) or confirmed as read
(the model's reading is the text), of succeeded pages; empty texts are left out (there is
nothing to learn to write). ``writer_or_document`` is the job's id, so that ``htrq train``
holds out whole jobs (a letter, a register) for validation, not lines of a hand it trains on.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from htrq.errors import PageError
from htrq.inputs import is_pdf, render_stored_page
from htrq.jobs.corrections import CheckedLine, checked_lines
from htrq.settings import Settings
from htrq.storage import BlobMissing, BlobStore
from worker.segmentation import LineBox
from worker.segmentation.crops import crop_lines, from_source_frame
from worker.segmentation.preprocess import SKEW_INFO_KEY, normalise_page
from worker.training.lines_tsv import write_tsv

#: Columns of the exported ``lines.tsv``: ``htrq train`` reads the first three, the others say
#: where each line comes from and what the model had read.
COLUMNS = ("file", "text", "writer_or_document", "page", "line", "model_text")


@dataclass
class ExportReport:
    path: Path  #: the ``lines.tsv`` written
    lines: int = 0
    pages: int = 0
    jobs: int = 0
    empty: int = 0  #: lines left out for an empty text
    skipped: list[str] = field(default_factory=list)  #: pages that could not be cut, and why


def cut_lines(
    data: bytes,
    frame: int,
    mode: str,
    lines: Sequence[LineBox],
    *,
    settings: Settings,
    size: tuple[int, int] | None = None,
) -> list[Image.Image]:
    """Crops of ``lines`` (stored boxes and outlines, on the uploaded image) of page
    ``frame`` of a stored upload, as the pipeline cut them for the reader.

    ``size``: the page's stored width and height (the image the lines refer to). Raises
    ``PageError`` for a page that no longer renders within the settings' limits.
    """
    raw = render_stored_page(data, frame, settings)
    if is_pdf(data) and size and all(size) and raw.size != size:
        raw = raw.resize(size, Image.Resampling.LANCZOS)
    page = normalise_page(raw, max_pixels=settings.max_pixels, deskew=mode != "line")
    boxes = from_source_frame(list(lines), page.info.get(SKEW_INFO_KEY, 0.0), page.size)
    return crop_lines(page, boxes, margin=settings.line_margin)


def export_corrections(
    *,
    sessions: sessionmaker[Session],
    storage: BlobStore,
    settings: Settings,
    out: Path,
    tenant: str | None = None,
    since: datetime | None = None,
) -> ExportReport:
    """Write the checked lines (of ``tenant``'s jobs only, and checked at or after ``since``,
    where given) to ``out``: one PNG per line and ``out/lines.tsv`` (:data:`COLUMNS`).

    Raises :class:`UnknownTenant` for a tenant name that does not exist.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(path=out / "lines.tsv")
    rows: list[list[str]] = []
    blob: tuple[str, bytes] | None = None  # the last file read: a PDF's pages come in a row
    jobs: set[uuid.UUID] = set()
    checked = checked_lines(sessions=sessions, tenant=tenant, since=since)
    for (job_id, page_index), group in itertools.groupby(checked, lambda r: (r.job_id, r.page)):
        page_lines = list(group)
        first = page_lines[0]
        texts = [r.correction if r.correction is not None else r.text for r in page_lines]
        keep = [(r, t) for r, t in zip(page_lines, texts, strict=True) if t.strip()]
        report.empty += len(page_lines) - len(keep)
        if not keep:
            continue
        where = f"job {job_id} page {page_index}"
        try:
            if blob is None or blob[0] != first.blob_key:
                blob = (first.blob_key, storage.get(first.blob_key))
            crops = cut_lines(
                blob[1],
                first.frame,
                first.mode,
                [_box(r) for r, _ in keep],
                settings=settings,
                size=(first.width or 0, first.height or 0),
            )
        except BlobMissing:
            report.skipped.append(f"{where}: its file is no longer stored")
            continue
        except PageError as exc:
            report.skipped.append(f"{where}: {exc.code}: {exc.message}")
            continue
        for (r, text), crop in zip(keep, crops, strict=True):
            name = f"{job_id}-p{page_index:04d}-l{r.index:04d}.png"
            crop.save(out / name)
            rows.append([name, text, str(job_id), str(page_index), str(r.index), r.text])
        report.pages += 1
        jobs.add(job_id)
    write_tsv(report.path, COLUMNS, rows)
    report.lines, report.jobs = len(rows), len(jobs)
    return report


def _box(row: CheckedLine) -> LineBox:
    return LineBox(
        bbox=(row.x0, row.y0, row.x1, row.y1),
        polygon=[tuple(p) for p in json.loads(row.polygon)] if row.polygon else None,
        baseline=[tuple(p) for p in json.loads(row.baseline)] if row.baseline else None,
    )
