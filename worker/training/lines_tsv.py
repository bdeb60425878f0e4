"""Writing a ``lines.tsv``: one writer for every folder htrq writes (torch-free, so that the
corrections export does not load torch to write one)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path


def write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Write a ``lines.tsv`` whole or not at all (a half-written one would train on less),
    unquoted as ``read_lines_tsv`` reads it: a text's own quotes stay as written."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(
            fh, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, lineterminator="\n"
        )
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)
