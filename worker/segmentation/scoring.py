"""Score line detection: boxes matched one-to-one at IoU >= a threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

Box = tuple[int, int, int, int]  #: x0, y0, x1, y1


@dataclass(frozen=True)
class Score:
    true_positives: int
    predicted: int
    expected: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.expected if self.expected else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Score) -> Score:
        return Score(
            self.true_positives + other.true_positives,
            self.predicted + other.predicted,
            self.expected + other.expected,
        )


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(predicted: list[Box], expected: list[Box], *, threshold: float = 0.5) -> Score:
    """Greedy one-to-one matching, best IoU first: each box counts at most once."""
    pairs = sorted(
        (
            (iou(p, e), i, j)
            for i, p in enumerate(predicted)
            for j, e in enumerate(expected)
            if iou(p, e) >= threshold
        ),
        reverse=True,
    )
    used_p: set[int] = set()
    used_e: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_e:
            used_p.add(i)
            used_e.add(j)
    return Score(len(used_p), len(predicted), len(expected))


def alto_line_boxes(path: Path) -> list[Box]:
    """Ground-truth line boxes of an ALTO file (any ALTO namespace version)."""
    tree = ET.parse(path)
    boxes: list[Box] = []
    for line in tree.getroot().iterfind(".//{*}TextLine"):
        x, y = float(line.get("HPOS", 0)), float(line.get("VPOS", 0))
        w, h = float(line.get("WIDTH", 0)), float(line.get("HEIGHT", 0))
        boxes.append((round(x), round(y), round(x + w), round(y + h)))
    return boxes


def alto_line_texts(path: Path) -> list[str]:
    """Ground-truth text of each ALTO line, in document order (its Strings joined by spaces)."""
    tree = ET.parse(path)
    return [
        " ".join(s.get("CONTENT", "") for s in line.iterfind("{*}String")).strip()
        for line in tree.getroot().iterfind(".//{*}TextLine")
    ]
