"""Page image in, text lines out: the page normalised (``preprocess``), its lines found by a
:class:`Segmenter` (``classical`` by default: OpenCV only), cut out and mapped between the
deskewed page and the upload (``crops``).

``mode=page`` uses :func:`make_segmenter`; ``mode=line`` uses :class:`WholeImageSegmenter`.
The segmenters import their types from :mod:`worker.segmentation.base`, never from here.
"""

from __future__ import annotations

from worker.segmentation.base import LineBox, Segmenter, WholeImageSegmenter

__all__ = ["SEGMENTERS", "LineBox", "Segmenter", "WholeImageSegmenter", "make_segmenter"]

#: Segmenters :func:`make_segmenter` knows; ``kraken`` needs the optional kraken package.
SEGMENTERS = ("classical", "projection", "kraken", "whole")


def make_segmenter(name: str = "classical") -> Segmenter:
    """The segmenter called ``name`` (one of :data:`SEGMENTERS`)."""
    if name == "classical":
        from worker.segmentation.classical import ClassicalSegmenter

        return ClassicalSegmenter()
    if name == "projection":
        from worker.segmentation.projection import ProjectionSegmenter

        return ProjectionSegmenter()
    if name == "kraken":
        from worker.segmentation.kraken_blla import KrakenSegmenter

        return KrakenSegmenter()
    if name == "whole":
        return WholeImageSegmenter()
    raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
