"""kraken's neural baseline segmenter (``blla``, as in eScriptorium) behind the Segmenter seam.

Optional: kraken is not a dependency of htrq (kraken 7 pins torch <= 2.14 plus torchvision,
which the worker's torch build need not match). ``bench/segmentation.py --methods kraken``
measures it from an environment that has it; the service default is the classical segmenter.
"""

from __future__ import annotations

import warnings
from typing import Any

from PIL import Image

from worker.segmentation.base import LineBox


class KrakenSegmenter:
    """Runs ``kraken.blla.segment`` with the default model bundled in the kraken package."""

    def __init__(self, *, device: str = "cpu") -> None:
        from importlib import resources

        from kraken.lib import vgsl

        self.device = device
        self.model: Any = vgsl.TorchVGSLModel.load_model(
            str(resources.files("kraken").joinpath("blla.mlmodel"))
        )

    def __call__(self, page: Image.Image) -> list[LineBox]:
        from kraken import blla

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # blla.segment until kraken 8
            seg = blla.segment(page, model=self.model, device=self.device)
        boxes = []
        for line in seg.lines:
            poly = [(int(x), int(y)) for x, y in (line.boundary or line.baseline)]
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            boxes.append(
                LineBox(
                    bbox=(min(xs), min(ys), max(xs), max(ys)),
                    polygon=poly,
                    baseline=[(int(x), int(y)) for x, y in line.baseline],
                )
            )
        return boxes
