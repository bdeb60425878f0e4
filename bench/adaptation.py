"""Teach it your documents, through the API: what N corrected lines buy on OTHER documents
of the same collection, and what the training costs on this machine.

    .venv/bin/python bench/adaptation.py ../shared/data/real-train/peraire_celestine_fr \\
        --correct 100 300 --broker-url redis://127.0.0.1:6383/12

Real services on a scratch database: ``htrq api``, ``htrq worker`` (the built-in model) and
``htrq trainer``, driven only through the HTTP API with the Python client, as a DMS would:

1. the collection's documents (its ``writer_or_document`` column) are shuffled (``--seed``)
   and split: the first whole ones up to ``--other-lines`` lines are the other documents,
   read to measure; the rest are the documents to correct;
2. the other documents' lines are submitted as ``mode=line`` jobs (one per document) and read
   by the built-in model: the CER before;
3. documents to correct are submitted, a job per scanned page (its ``page`` column), until
   they hold the largest N lines;
4. for each N, lines are corrected by PATCH with their ground truth (in document order, so
   whole documents first; a line read right is confirmed as it is), up to N in all, then
   ``POST /v1/models`` trains a model on them; its held-out figures (whole page-jobs of the
   corrected ones) come back on the model resource;
5. the other documents are submitted again naming the new model: the CER after.

The collection is read from the path given on the command line only. ``--json`` writes the
figures as JSON to a file as well.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from scratch import scratch_service, settings_env, worker_arguments

from htrq.client import Client
from tests.services import Processes, wait_for
from worker.training.data import read_column, read_lines_tsv
from worker.training.error_rates import cer

Line = tuple[Path, str]


def documents(collection: Path) -> dict[str, list[Line]]:
    """The collection's lines by document, in file order."""
    docs: dict[str, list[Line]] = {}
    pairs = read_lines_tsv(collection)
    for line, doc in zip(pairs, read_column(collection, "writer_or_document"), strict=True):
        docs.setdefault(doc, []).append(line)
    return docs


def split_documents(
    docs: dict[str, list[Line]], *, other_lines: int, seed: int
) -> tuple[list[str], list[str]]:
    """The documents read to measure (whole ones, shuffled by ``seed``, until they hold
    ``other_lines`` lines) and the rest, to correct, in that shuffled order."""
    names = sorted(docs)
    random.Random(seed).shuffle(names)
    other: list[str] = []
    while names and sum(len(docs[n]) for n in other) < other_lines:
        other.append(names.pop(0))
    return other, names


def read(htrq: Client, docs: list[list[Line]], model: str | None, timeout: float) -> float:
    """Submit each document as a ``mode=line`` job (read by ``model``), wait, return the CER
    of the readings against the ground truth."""
    refs, hyps = [], []
    for lines in docs:
        job = htrq.submit([p for p, _ in lines], mode="line", model=model)
        job = htrq.wait(job.id, timeout=timeout, interval=2)
        for page, (_, text) in zip(htrq.pages(job.id), lines, strict=True):
            refs.append(text)
            hyps.append(page.text or "")
    return cer(refs, hyps)


def submit_to_correct(
    htrq: Client, docs: list[list[Line]], pages: dict[Path, str], timeout: float
) -> list[tuple[str, int, str]]:
    """Submit the documents to correct, one job per scanned page (its lines, as ``mode=line``
    pages), as a DMS sends pages as they are scanned: the trainer holds out whole jobs, so
    the first hundred lines of one long notebook still leave some to hold out. Every line
    as (job id, page, ground truth), in order."""
    lines = []
    for doc in docs:
        by_page: dict[str, list[Line]] = {}
        for line in doc:
            by_page.setdefault(pages[line[0]], []).append(line)
        for page_lines in by_page.values():
            job = htrq.submit([p for p, _ in page_lines], mode="line")
            htrq.wait(job.id, timeout=timeout, interval=2)
            lines += [(str(job.id), i, text) for i, (_, text) in enumerate(page_lines)]
    return lines


def minutes(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds() / 60, 1) if start and end else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("collection", type=Path, help="a lines.tsv folder with writer_or_document")
    p.add_argument("--correct", type=int, nargs="+", default=[100, 300], help="Ns, ascending")
    p.add_argument(
        "--other-lines", type=int, default=120, help="lines of other documents read (whole ones)"
    )
    p.add_argument(
        "--steps", type=int, default=0, help="HTRQ_TRAIN_STEPS (0: HTRQ_TRAIN_EPOCHS passes)"
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--trainer-threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here too")
    worker_arguments(p, flush_every=16, num_beams=4, timeout=7200)
    # The service's own default: these lines run to 80 characters.
    p.set_defaults(max_new_tokens=96)
    args = p.parse_args(argv)

    docs = documents(args.collection)
    other, to_correct = split_documents(docs, other_lines=args.other_lines, seed=args.seed)
    other_docs = [docs[name] for name in other]
    correct_docs: list[list[Line]] = []
    for name in to_correct:
        if sum(map(len, correct_docs)) >= max(args.correct):
            break
        correct_docs.append(docs[name])

    figures: dict[str, Any] = {
        "collection": args.collection.name,
        "other_documents": len(other_docs),
        "other_lines": sum(map(len, other_docs)),
        "steps": args.steps,
        "lr": args.lr,
        "batch": args.train_batch,
        "num_beams": args.num_beams,
        "runs": [],
    }
    with scratch_service(
        args,
        auth="off",
        max_pages_per_job=5000,
        train_steps=args.steps,
        train_max_steps=max(5000, args.steps),
        train_lr=args.lr,
        train_batch_size=args.train_batch,
        trainer_threads=args.trainer_threads,
        train_min_lines=min(50, min(args.correct)),
    ) as settings:
        procs = Processes(Path(str(settings.storage_dir)).parent)
        env = settings_env(settings, TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
        try:
            url = procs.api(env)
            procs.worker("worker", env)
            trainer, log = procs.start("trainer", ["trainer", "--loglevel=info"], env)
            wait_for(lambda: b" ready." in log.read_bytes(), "the trainer", trainer, log)
            with Client(url, timeout=120) as htrq:
                started = time.monotonic()
                figures["cer_before"] = round(read(htrq, other_docs, None, args.timeout), 4)
                print(f"adaptation: CER before: {figures['cer_before']}", flush=True)
                pages = dict(
                    zip(
                        (p for p, _ in read_lines_tsv(args.collection)),
                        read_column(args.collection, "page"),
                        strict=True,
                    )
                )
                lines = submit_to_correct(htrq, correct_docs, pages, args.timeout)
                done = 0
                for n in sorted(args.correct):
                    for job_id, page, text in lines[done:n]:
                        htrq.correct(job_id, page, 0, text)
                    done = min(n, len(lines))
                    model = htrq.train(f"n{n}")
                    model = htrq.wait_model(model.id, timeout=args.timeout, interval=10)
                    after = read(htrq, other_docs, model.name, args.timeout)
                    run = {
                        "corrected": done,
                        "status": model.status,
                        "train_lines": model.train_lines,
                        "steps": model.recipe.steps,
                        "heldout_lines": model.heldout_lines,
                        "heldout_base_cer": model.base_cer,
                        "heldout_cer": model.cer,
                        "train_minutes": minutes(model.started_at, model.finished_at),
                        "cer_after": round(after, 4),
                    }
                    figures["runs"].append(run)
                    print(f"adaptation: N={n}: {json.dumps(run)}", flush=True)
                figures["wall_minutes"] = round((time.monotonic() - started) / 60, 1)
        finally:
            procs.close()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n| N corrected | trained on | steps | CER other docs before | after | training min |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in figures["runs"]:
        print(
            f"| {run['corrected']} | {run['train_lines']} | {run['steps']} | "
            f"{figures['cer_before']:.3f} | "
            f"{run['cer_after']:.3f} | {run['train_minutes']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
