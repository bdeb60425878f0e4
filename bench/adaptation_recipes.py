"""Which fine-tune recipe a tenant model should get: the same split and the same fine-tune as
``bench/adaptation.py`` and ``htrq trainer``, without the services, so that recipes compare
in minutes rather than hours.

    .venv/bin/python bench/adaptation_recipes.py ../shared/data/real-train/peraire_celestine_fr \\
        --correct 300 --recipe steps=400,lr=1e-4 --recipe steps=400,lr=3e-4

The collection's documents are shuffled and split as ``bench/adaptation.py`` splits them
(the same ``--seed`` and ``--other-lines`` give the same documents): the first N lines of the
documents to correct are written as a ``lines.tsv`` folder whose ``writer_or_document`` is the
document, as a tenant's export names its jobs, and ``split_jobs`` holds whole documents out
exactly as the trainer does. Each recipe fine-tunes the base with
``worker.training.tenant.fine_tune`` and is read on the other documents (greedy unless
``--num-beams``), with the training minutes of this machine beside it.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from adaptation import documents, split_documents

from worker.recognition.recognizer import BUILTIN_MODEL
from worker.training.tenant import Hooks, Recipe, fine_tune, measure, split_jobs


def recipe(text: str) -> Recipe:
    """``steps=400,lr=1e-4,batch=16,warmup=20,augment=1`` (any subset) as a Recipe."""
    fields: dict[str, float] = {
        "steps": 400,
        "batch_size": 16,
        "lr": 1e-4,
        "warmup": 20,
        "augment": 1.0,
    }
    names = {"batch": "batch_size"}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        key = names.get(key.strip(), key.strip())
        if key not in fields:
            raise argparse.ArgumentTypeError(f"unknown recipe field {key!r}")
        fields[key] = type(fields[key])(float(value))
    return Recipe(**fields)  # type: ignore[arg-type]


def write_folder(
    folder: Path, docs: list[list[tuple[Path, str]]], names: list[str], n: int
) -> None:
    """The first ``n`` lines of ``docs`` as a lines.tsv folder naming each line's document."""
    folder.mkdir(parents=True)
    with open(folder / "lines.tsv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        out.writerow(["file", "text", "writer_or_document"])
        left = n
        for name, lines in zip(names, docs, strict=True):
            for path, text in lines[:left]:
                out.writerow([str(path.resolve()), text, name])
            left -= min(left, len(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("collection", type=Path)
    p.add_argument("--correct", type=int, nargs="+", default=[300])
    p.add_argument("--recipe", type=recipe, action="append", required=True)
    p.add_argument("--base", type=Path, default=None, help="model folder (default: built-in)")
    p.add_argument("--other-lines", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--ctc-weight", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--baseline", action="store_true", help="read the base on them too")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    base = args.base or BUILTIN_MODEL
    docs = documents(args.collection)
    other, to_correct = split_documents(docs, other_lines=args.other_lines, seed=args.seed)
    other_pairs = [line for name in other for line in docs[name]]
    read = dict(num_beams=args.num_beams, ctc_weight=args.ctc_weight, max_new_tokens=96)
    print(f"other documents: {len(other)}, {len(other_pairs)} lines", flush=True)
    if args.baseline:
        print(f"base: CER {measure(base, other_pairs, **read):.4f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="htrq-recipes-") as tmp:
        for n in args.correct:
            folder = Path(tmp) / f"n{n}"
            write_folder(folder, [docs[name] for name in to_correct], to_correct, n)
            split = split_jobs(folder)
            for r in args.recipe:
                work = Path(tmp) / "work"
                shutil.rmtree(work, ignore_errors=True)
                started = time.monotonic()
                model = fine_tune(
                    base=base,
                    train=split.train,
                    recipe=r,
                    work=work,
                    hooks=Hooks(),
                    checkpoint_every=10**9,
                )
                minutes = (time.monotonic() - started) / 60
                assert model is not None
                after = measure(model, other_pairs, **read)
                held = measure(model, split.heldout, **read)
                rows.append((n, len(split.train), r, minutes, after, held))
                print(
                    f"N={n} train={len(split.train)} {r}: other {after:.4f} "
                    f"held-out {held:.4f} ({minutes:.1f} min)",
                    flush=True,
                )
    print(
        "\n| N | trained on | steps | batch | lr | augment | other docs CER | held-out CER | min |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, k, r, minutes, after, held in rows:
        print(
            f"| {n} | {k} | {r.steps} | {r.batch_size} | {r.lr:g} | {r.augment:g} | "
            f"{after:.3f} | {held:.3f} | {minutes:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
