"""What the API tells archivists about doubtful lines."""

from __future__ import annotations

import uuid

from htrq.resources import REVIEW_BELOW, LineResource, PageResource
from worker.serving.cli import _text_entry


def test_needs_review_is_part_of_the_line_schema():
    """Clients see needs_review in the OpenAPI schema of a line."""
    assert "needs_review" in LineResource.model_json_schema(mode="serialization")["properties"]


def _page(confidences: list[float]) -> PageResource:
    lines = [
        LineResource(
            index=i, text="x", confidence=c, bbox=(0, 0, 1, 1), needs_review=c < REVIEW_BELOW
        )
        for i, c in enumerate(confidences)
    ]
    return PageResource(
        id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        index=0,
        status="succeeded",
        filename="a.png",
        frame=0,
        width=10,
        height=10,
        text="x",
        confidence=0.9,
        lines=lines,
        error=None,
        attempts=1,
        model="builtin",
        started_at=None,
        finished_at=None,
    )


def test_a_page_counts_its_lines_to_review():
    """The page resource says how many of its lines are flagged, so a DMS can sort pages for
    checking without reading every line."""
    page = _page([0.99, REVIEW_BELOW - 0.2, 0.95, REVIEW_BELOW - 0.01])
    assert page.model_dump()["lines_to_review"] == 2
    assert _page([0.99]).model_dump()["lines_to_review"] == 0


def test_transcribe_output_says_how_many_lines_to_review():
    """``htrq transcribe`` puts the count in each page's heading, only when there is one."""
    assert "2 of 4 lines to review" in _text_entry(_page([0.99, 0.1, 0.95, 0.2]))
    assert "to review" not in _text_entry(_page([0.99]))


def test_a_line_exactly_at_the_threshold_is_not_flagged():
    """needs_review means below HTRQ_REVIEW_BELOW (docs/review.md): a line whose confidence
    equals the threshold is not flagged, one just under it is, in the API and in exports."""
    from htrq.exports.formats import _row_line
    from htrq.jobs import line_resource
    from htrq.models import Line

    def line(confidence: float) -> Line:
        return Line(index=0, text="x", confidence=confidence, x0=0, y0=0, x1=1, y1=1)

    at, under = line(0.75), line(0.75 - 1e-9)
    assert not line_resource(at, review_below=0.75).needs_review
    assert line_resource(under, review_below=0.75).needs_review
    assert _row_line(at, 0.75)["needs_review"] is False
    assert _row_line(under, 0.75)["needs_review"] is True
