"""The correction loop end to end, on a ``lines.tsv`` collection standing in for an archive:
how much does an archivist's correcting N lines teach the model about the archive's hands?

    .venv/bin/python bench/correction_loop.py --collection DIR --correct 200 --steps 1500

The collection's letters (its ``writer_or_document`` column) are shuffled (``--seed``) and
split in two: letters an archivist corrects, and unseen letters, read to measure. Then, as a
deployment would run it:

1. the lines of the letters to correct are submitted, one job per letter, as ``mode=line``
   pages through the service's own path (job service, blob store, the worker's batch code and
   pipeline, in this process on a throwaway SQLite database, as ``htrq transcribe`` runs it);
2. ``--correct`` of their lines get their ground truth through the function behind
   ``PATCH /v1/jobs/{id}/pages/{n}/lines/{i}``, in an archivist's order: the lines the service
   flags ``needs_review`` first, least confident first, then the others (a line the model
   read right is thereby confirmed, ``reviewed``);
3. ``htrq corrections export`` writes them as a ``lines.tsv`` folder of crops;
4. ``htrq train --init MODEL --lines EXPORT=1 --synthetic-weight W --steps S`` fine-tunes the
   model on this machine (CPU unless told otherwise);
5. the unseen letters are read as ``mode=line`` pages through the same service path with the
   model before and after, and their CER is printed with the training minutes.

The unseen letters never reach training (their lines are not corrected), and
``htrq train`` holds out some corrected letters for its own validation, whole. Needs the
worker and train extras; no server. ``--json`` prints the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from htrq import jobs
from htrq.jobs.corrections import correct_line
from htrq.jobs.uploads import Upload
from htrq.settings import Settings, load_settings
from htrq.tenants import default_tenant
from migrations import upgrade
from worker.recognition.recognizer import resolve_model
from worker.serving.app import load_context
from worker.serving.batch import process_batch
from worker.serving.embedded import LocalQueue, transcribe
from worker.training.data import read_column, read_lines_tsv
from worker.training.error_rates import cer
from worker.training.reviewed_lines import export_corrections
from worker.training.writers import WRITER_COLUMN

Line = tuple[Path, str]


def letters_of(collection: Path) -> dict[str, list[Line]]:
    """The collection's lines by letter (``writer_or_document``), in file order."""
    pairs = read_lines_tsv(collection)
    letters: dict[str, list[Line]] = {}
    for (path, text), letter in zip(pairs, read_column(collection, WRITER_COLUMN), strict=True):
        letters.setdefault(letter, []).append((path, text))
    return letters


def split_letters(
    letters: dict[str, list[Line]], *, unseen_share: float, seed: int
) -> tuple[list[str], list[str]]:
    """(letters to correct, unseen letters): at least one of each."""
    names = sorted(letters)
    if len(names) < 2:
        raise SystemExit("the collection needs at least two letters (writer_or_document values)")
    random.Random(seed).shuffle(names)
    unseen = min(len(names) - 1, max(1, round(unseen_share * len(names))))
    return names[unseen:], names[:unseen]


def spread(lines: list[Line], n: int) -> list[Line]:
    """At most ``n`` lines taken evenly over ``lines`` (every letter keeps some)."""
    if n <= 0 or len(lines) <= n:
        return lines
    step = len(lines) / n
    return [lines[int(i * step)] for i in range(n)]


def first_letters(letters: dict[str, list[Line]], names: list[str], lines: int) -> list[str]:
    """The first of ``names`` whose lines reach ``lines`` (all of them for 0)."""
    if lines <= 0:
        return names
    taken, count = [], 0
    for name in names:
        if count >= lines:
            break
        taken.append(name)
        count += len(letters[name])
    return taken


def read_cer(lines: list[Line], settings: Settings, model: str) -> float:
    """CER of ``model`` on ``lines``, each read as a ``mode=line`` page by the service's path."""
    pages = transcribe(
        [p for p, _ in lines], settings=settings.model_copy(update={"model": model}), mode="line"
    )
    return cer([t for _, t in lines], [p.text or "" for p in pages])


def correct_archive(
    letters: dict[str, list[Line]], names: list[str], settings: Settings, work: Path, n: int
) -> dict[str, float | int]:
    """Steps 1-3: submit, read, correct ``n`` lines, export; returns counts and the model's
    CER on the corrected lines before correction."""
    database_url = f"sqlite:///{work / 'archive.sqlite'}"
    upgrade(database_url)
    queue = LocalQueue()
    ctx = load_context(settings, database_url=database_url, send=queue)
    tenant = default_tenant(ctx.sessions)
    truth: dict[tuple[str, int], str] = {}  # (job id, page index) -> ground truth
    for name in names:
        job, _ = jobs.submit(
            sessions=ctx.sessions,
            storage=ctx.storage,
            send=queue,
            settings=settings,
            tenant_id=tenant,
            uploads=[Upload(path.name, path=path) for path, _ in letters[name]],
            mode="line",
            external_id=name,
        )
        for page, (_, text) in zip(job.pages, letters[name], strict=True):
            truth[(str(job.id), page.index)] = text
    while len(queue):
        process_batch(queue.take(settings.flush_every), ctx)

    read = []  # (needs_review, confidence, job id, page index, model text)
    for job_id, index in truth:
        page = jobs.get_page(
            sessions=ctx.sessions,
            tenant_id=tenant,
            job_id=job_id,
            index=index,
            review_below=settings.review_below,
        )
        if page.status == "succeeded" and page.lines:
            ln = page.lines[0]
            read.append((ln.needs_review, ln.confidence, job_id, index, ln.text))
    read.sort(key=lambda r: (not r[0], r[1]))  # flagged first, least confident first
    chosen = read[:n]
    for _, _, job_id, index, _ in chosen:
        correct_line(
            sessions=ctx.sessions,
            tenant_id=tenant,
            job_id=job_id,
            page_index=index,
            line_index=0,
            text=truth[(job_id, index)],
            review_below=settings.review_below,
        )
    report = export_corrections(
        sessions=ctx.sessions, storage=ctx.storage, settings=settings, out=work / "corrections"
    )
    ctx.sessions.kw["bind"].dispose()
    refs = [truth[(j, i)] for _, _, j, i, _ in chosen]
    return {
        "pages_read": len(read),
        "corrected": sum(r != m for r, (*_, m) in zip(refs, chosen, strict=True)),
        "confirmed": sum(r == m for r, (*_, m) in zip(refs, chosen, strict=True)),
        "exported": report.lines,
        "cer_of_corrected_lines_before": cer(refs, [m for *_, m in chosen]) if chosen else 0.0,
    }


def fine_tune(args: argparse.Namespace, base: str, export: Path, run: Path) -> float:
    """Step 4: ``htrq train`` on the export; returns the minutes it took."""
    cmd = [
        sys.executable, "-m", "htrq.cli", "train", "--init", base,
        "--lines", f"{export}=1", "--synthetic-weight", str(args.synthetic_weight),
        "--steps", str(args.steps), "--eval-every", str(args.steps),
        "--save-every", str(args.steps), "--out", str(run), "--export", str(run / "best"),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--warmup", str(min(args.warmup, max(1, args.steps // 10))),
        "--val-real-lines", str(args.val_real_lines), "--curriculum-steps", "0",
        "--threads", str(args.threads), "--workers", "0",
        *shlex.split(args.train_args),
    ]  # fmt: skip
    print(f"correction loop: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    minutes = (time.monotonic() - start) / 60
    if not (run / "best" / "config.json").exists():
        raise SystemExit(f"htrq train exported no model to {run / 'best'}")
    return minutes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--collection",
        type=Path,
        required=True,
        help="lines.tsv folder with a writer_or_document column: the archive",
    )
    ap.add_argument("--correct", type=int, default=200, help="lines the archivist corrects")
    ap.add_argument(
        "--unseen-share",
        type=float,
        default=0.3,
        help="share of the letters kept unseen, to measure on",
    )
    ap.add_argument(
        "--unseen-lines", type=int, default=300, help="most unseen lines read for each CER (0: all)"
    )
    ap.add_argument(
        "--read-lines",
        type=int,
        default=0,
        help="lines of letters to correct submitted and read, in whole letters (0: every "
        "letter; an archivist works through a part of the archive at a time)",
    )
    ap.add_argument("--model", default="builtin", help="the model before: builtin, a folder")
    ap.add_argument("--steps", type=int, default=1500, help="fine-tuning steps")
    ap.add_argument(
        "--synthetic-weight",
        type=float,
        default=0.2,
        help="synthetic lines beside the corrections (htrq train)",
    )
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument(
        "--val-real-lines",
        type=int,
        default=40,
        help="corrected lines of whole letters htrq train validates on",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads for training")
    ap.add_argument("--train-args", default="", help="more htrq train options, as one string")
    ap.add_argument("--num-beams", type=int, default=None, help="reading (HTRQ_NUM_BEAMS)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="HTRQ_MAX_NEW_TOKENS")
    ap.add_argument("--batch-lines", type=int, default=None, help="HTRQ_BATCH_SIZE")
    ap.add_argument("--seed", type=int, default=0, help="which letters are unseen")
    ap.add_argument("--work", type=Path, help="keep the database, export and model here")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    letters = letters_of(args.collection)
    to_correct, unseen = split_letters(letters, unseen_share=args.unseen_share, seed=args.seed)
    unseen_lines = spread([ln for name in unseen for ln in letters[name]], args.unseen_lines)
    to_correct = first_letters(letters, to_correct, args.read_lines)
    reading = {
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_lines,
    }
    settings = load_settings(
        database_url=None,
        broker_url=None,
        storage_url=None,
        model=args.model,
        max_pages_per_job=100_000,  # one job per letter, however long
        **{k: v for k, v in reading.items() if v is not None},
    )
    base = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="htrq-loop-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        settings = settings.model_copy(update={"storage_dir": work / "blobs"})
        print(
            f"correction loop: {len(to_correct)} letters to correct, {len(unseen)} unseen "
            f"({len(unseen_lines)} lines read)",
            file=sys.stderr,
            flush=True,
        )
        before = read_cer(unseen_lines, settings, base)
        counts = correct_archive(letters, to_correct, settings, work, args.correct)
        minutes = fine_tune(args, base, work / "corrections", work / "run")
        after = read_cer(unseen_lines, settings, str(work / "run" / "best"))
    figures = {
        "letters_corrected_from": len(to_correct),
        "letters_unseen": len(unseen),
        "unseen_lines": len(unseen_lines),
        **counts,
        "steps": args.steps,
        "train_minutes": round(minutes, 2),
        "cer_unseen_before": round(before, 4),
        "cer_unseen_after": round(after, 4),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{counts['corrected']} lines corrected and {counts['confirmed']} confirmed "
            f"({counts['exported']} exported) from {len(to_correct)} letters; "
            f"{args.steps} steps in {minutes:.1f} min\n"
            f"CER on {len(unseen_lines)} lines of {len(unseen)} unseen letters: "
            f"{before:.4f} before, {after:.4f} after ({after - before:+.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
