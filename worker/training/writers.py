"""Real line folders split by writer, so that validation measures hands the model never saw.

Lines of one writer look alike: a split by line puts the same hand on both sides and
validation then flatters the model. A folder whose ``lines.tsv`` has a
``writer_or_document`` column is split by that column (a letter, a will, a manuscript);
a folder without it counts as one writer, all for training. Which writers are held out
depends only on their names and the seed, so a resumed or repeated run holds out the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.training.data import _rows

WRITER_COLUMN = "writer_or_document"


@dataclass(frozen=True)
class Collection:
    """A real line folder: training lines, held-out lines and the held-out writers' names."""

    name: str
    train: tuple[tuple[Path, str], ...]
    val: tuple[tuple[Path, str], ...]
    val_writers: tuple[str, ...]
    skipped: int  #: lines dropped for characters the tokenizer cannot write


def _order(writer: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{writer}".encode()).hexdigest()


def split_collection(
    folder: Path, *, writable: Callable[[str], bool], val_lines: int, seed: int = 0
) -> Collection:
    """Hold out whole writers, in an order fixed by ``seed``, until ``val_lines`` lines are out.

    Lines whose text is not ``writable`` are dropped (a label the tokenizer turns into
    ``<unk>`` teaches the model to write ``<unk>``). ``val_lines`` 0 holds out nobody.
    """
    folder = Path(folder)
    rows = _rows(folder, "file", "text")
    kept = [r for r in rows if r["text"] and writable(r["text"])]
    by_writer: dict[str, list[tuple[Path, str]]] = {}
    for r in kept:
        by_writer.setdefault(r.get(WRITER_COLUMN) or "", []).append((folder / r["file"], r["text"]))
    held: list[str] = []
    val: list[tuple[Path, str]] = []
    # Never hold out the last writer: a one-writer folder stays all training.
    for writer in sorted(by_writer, key=lambda w: _order(w, seed))[: len(by_writer) - 1]:
        if len(val) >= val_lines:
            break
        held.append(writer)
        val.extend(by_writer[writer])
    train = [pair for w, pairs in by_writer.items() if w not in held for pair in pairs]
    return Collection(
        name=folder.name,
        train=tuple(train),
        val=tuple(val),
        val_writers=tuple(sorted(held)),
        skipped=len(rows) - len(kept),
    )
