"""What the API tells archivists about doubtful lines."""

from __future__ import annotations

from htrq.resources import REVIEW_BELOW, LineResource


def test_low_confidence_lines_are_flagged_for_review():
    """A line below the review threshold says needs_review; one at or above it does not."""
    low = LineResource(index=0, text="x", confidence=REVIEW_BELOW - 0.01, bbox=(0, 0, 1, 1))
    high = LineResource(index=1, text="y", confidence=REVIEW_BELOW, bbox=(0, 0, 1, 1))
    assert low.model_dump()["needs_review"] is True
    assert high.model_dump()["needs_review"] is False
    assert "needs_review" in LineResource.model_json_schema(mode="serialization")["properties"]
