"""Write the trainer's validation lines of held-out writers as ``lines.tsv`` folders, to read
them with ``htrq eval``: one folder per collection and ``all`` (with a ``collection`` column
for ``--by collection``).

The split is the trainer's (``split_collection``, seed 0) and so are the lines it reads
(``spread``). ``--val-lines`` must be the one the models compared were trained with, or the
smaller of them: a larger value holds out more writers, and a model trained with the smaller
one has trained on those (8f used 100, stage 9 the default 120, so models are compared at 100).

    .venv/bin/python bench/validation_lines.py ../shared/data/real-train runs/val \
        hooker_en copiste_dun_jour_fr testaments_poilus_fr cremma_mss19_fr cremma_mss18_fr
    .venv/bin/htrq eval runs/val/all --beams 1,4 --by collection
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoProcessor

from worker.recognition.recognizer import BUILTIN_MODEL
from worker.training.lines_tsv import write_tsv
from worker.training.train import spread, writable
from worker.training.writers import split_collection


def write(folder: Path, rows: list[tuple[str, str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "lines.tsv", ["file", "text", "collection"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root", type=Path, help="folder holding the collections' lines.tsv folders")
    ap.add_argument("out", type=Path)
    ap.add_argument("collections", nargs="+")
    ap.add_argument("--val-lines", type=int, default=100)
    ap.add_argument("--model", default=str(BUILTIN_MODEL), help="whose tokenizer drops lines")
    args = ap.parse_args()
    tok = AutoProcessor.from_pretrained(args.model).tokenizer  # type: ignore[no-untyped-call]
    keep = writable(tok)
    every: list[tuple[str, str, str]] = []
    for name in args.collections:
        c = split_collection(args.root / name, writable=keep, val_lines=args.val_lines, seed=0)
        rows = [(str(p.resolve()), t, name) for p, t in spread(c.val, args.val_lines)]
        write(args.out / name, rows)
        every += rows
        print(f"{name}: {len(rows)} lines of {len(c.val_writers)} held-out writers")
    write(args.out / "all", every)


if __name__ == "__main__":
    main()
