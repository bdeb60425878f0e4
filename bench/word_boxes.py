"""Word boxes and word confidences against truth, and what the words cost.

Three measurements, each through the page pipeline the worker runs (``build_pipeline`` with
the recognizer ``load_recognizer`` makes from the settings; lines submitted as ``mode=line``
pages, PNG bytes in, page outputs out):

* ``boxes``: lines rendered in the fonts held out of training (``split_fonts``) with each
  word's ink box known (``LineRenderer(word_boxes=...)``); of the words read right (the
  reading's words matched to the truth's in order), the share whose box overlaps the true
  box at IoU >= 0.5, and the median error of the left and right edges in pixels.
* ``calibration`` (with ``--real``): real lines of the writers each collection holds out
  of training (``split_collection``, seed 0, as ``htrq train --val-real-lines`` does); of
  the words under the review threshold, the share read wrong, and of those over it, the
  share read right; for the decoder's word confidence alone and mixed with the alignment's
  (geometric mean of the CTC head's probabilities of the word's letters where they were
  placed), with the AUROC of each as a threshold-free measure.
* ``cost``: the same lines read with word alignment and without, in alternating rounds in
  one process, as lines per second.

With ``--service`` the boxes are measured through the service instead: a scratch database,
a real ``htrq api`` and ``htrq worker`` (the built-in model, the settings' decoding), the lines
posted to ``POST /v1/jobs`` as one ``mode=line`` job and the words read from each page
resource (``GET /v1/jobs/{id}/pages/{n}``).

    .venv/bin/python bench/word_boxes.py --lines 200 --threads 2 \\
        --real ../shared/data/real-train/hooker_en ../shared/data/real-train/copiste_dun_jour_fr
"""

from __future__ import annotations

import argparse
import bisect
import difflib
import io
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from scratch import worker_arguments  # bench/ is on the path (python bench/word_boxes.py)

from htrq.settings import Settings
from worker.recognition.pipeline import PageInput, PageOutput, Pipeline, build_pipeline
from worker.recognition.reading import line_reader
from worker.recognition.recognizer import Recognizer
from worker.serving.app import load_recognizer
from worker.training.synth import LineRenderer, TextSampler, load_fonts, split_fonts
from worker.training.writers import split_collection


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


Box = Sequence[float]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(read: list[str], truth: list[str]) -> list[tuple[int, int]]:
    """Pairs (read word, true word) that the reading got right, in order."""
    sm = difflib.SequenceMatcher(None, read, truth, autojunk=False)
    return [(b.a + k, b.b + k) for b in sm.get_matching_blocks() for k in range(b.size)]


def read_all(pipeline: Pipeline, images: list[bytes]) -> list[PageOutput]:
    out = pipeline([PageInput(i, data, mode="line") for i, data in enumerate(images)])
    pages = [out[i] for i in range(len(images))]
    return [p for p in pages if isinstance(p, PageOutput)]


def synthetic(n: int, seed: int) -> tuple[list[bytes], list[str], list[list[Box]]]:
    _, held_out = split_fonts(load_fonts())
    rng = random.Random(seed)
    sampler, renderer = TextSampler(rng), LineRenderer(rng)
    images: list[bytes] = []
    texts: list[str] = []
    truths: list[list[Box]] = []
    while len(images) < n:
        font = rng.choice(held_out)
        text = " ".join(sampler(40).split())
        if not text or not set(text) <= font.charset:
            continue
        boxes: list[tuple[float, float, float, float]] = []
        im = renderer(text, font, word_boxes=boxes)
        images.append(png(im))
        texts.append(text)
        truths.append(list(boxes))
    return images, texts, truths


#: A line as the boxes are scored: its box_source and words (``{"text", "box", ...}``).
Read = tuple[str | None, list[dict[str, Any]]]


def pipeline_lines(pipeline: Pipeline, images: list[bytes]) -> list[Read]:
    return [
        (ln.box_source, [dict(w) for w in ln.words or []])
        for out in read_all(pipeline, images)
        for ln in out.lines
    ]


def service_lines(args: argparse.Namespace, images: list[bytes]) -> list[Read]:
    """Each line read by a real API and worker (scratch database), as the API serves it."""
    import httpx
    from scratch import scratch_service, settings_env

    from tests.services import Processes

    with (
        scratch_service(args, auth="off", max_pages_per_job=max(500, len(images))) as settings,
        tempfile.TemporaryDirectory(prefix="htrq-words-") as tmp,
    ):
        procs = Processes(Path(tmp))
        try:
            env = settings_env(settings, TRANSFORMERS_VERBOSITY="error")
            url = procs.api(env)
            procs.start("worker", ["worker", "--loglevel=warning"], env)
            files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
            job = httpx.post(
                f"{url}/v1/jobs", files=files, data={"mode": "line"}, timeout=300
            ).json()["id"]
            deadline = time.monotonic() + args.timeout
            while (status := httpx.get(f"{url}/v1/jobs/{job}").json()["status"]) in (
                "queued",
                "running",
            ):
                if time.monotonic() > deadline:
                    log = (Path(tmp) / "worker.log").read_text(errors="replace")[-3000:]
                    raise SystemExit(f"timed out waiting for job {job}; the worker's log:\n{log}")
                time.sleep(1)
            print(f"job {job}: {status}")
            out: list[Read] = []
            for i in range(len(images)):
                page = httpx.get(f"{url}/v1/jobs/{job}/pages/{i}").json()
                out += [(ln["box_source"], ln["words"]) for ln in page["lines"]]
            return out
        finally:
            procs.close()


def bench_boxes(lines: list[Read], texts: list[str], truths: list[list[Box]]) -> None:
    hits = right_words = true_words = ctc = 0
    left: list[float] = []
    right: list[float] = []
    for (source, words), text, boxes in zip(lines, texts, truths, strict=True):
        ctc += source == "ctc"
        truth = text.split(" ")
        true_words += len(truth)
        for i, j in matched([w["text"] for w in words], truth):
            right_words += 1
            box, true = words[i]["box"], boxes[j]
            hits += iou(box, true) >= 0.5
            left.append(abs(box[0] - true[0]))
            right.append(abs(box[2] - true[2]))
    print(f"lines {len(lines)}, box_source ctc on {ctc}")
    print(f"words read right: {right_words} of {true_words} ({right_words / true_words:.3f})")
    print(f"IoU >= 0.5: {hits} of {right_words} ({hits / max(1, right_words):.3f})")
    for name, stat in (("median", statistics.median), ("mean", statistics.mean)):
        print(f"{name} edge error px: left {stat(left):.1f}, right {stat(right):.1f}")


def auroc(right: list[float], wrong: list[float]) -> float:
    """The chance that a right word scores above a wrong one (ties count half)."""
    if not right or not wrong:
        return float("nan")
    wrong_sorted = sorted(wrong)
    total = 0.0
    for c in right:
        below = bisect.bisect_left(wrong_sorted, c)
        ties = bisect.bisect_right(wrong_sorted, c) - below
        total += below + ties / 2
    return total / (len(right) * len(wrong))


def bench_calibration(
    recognizer: Recognizer, folders: list[Path], per_collection: int, below: float
) -> None:
    """Read through the line reader the pipeline uses (``mode=line`` pages are these crops
    whole), so that each word's alignment probability is at hand beside the decoder's."""
    images: list[Image.Image] = []
    texts: list[str] = []
    for folder in folders:
        split = split_collection(folder, writable=lambda _: True, val_lines=per_collection, seed=0)
        for path, text in split.val:
            images.append(Image.open(path).convert("L"))
            texts.append(text)
    reads = line_reader(recognizer)(images)
    words: list[tuple[bool, float, float]] = []  # (right, decoder, alignment)
    for read, text in zip(reads, texts, strict=True):
        if read is None:
            continue
        right = {i for i, _ in matched([w.text for w in read.words], text.split())}
        for i, w in enumerate(read.words):
            aligned = w.alignment if w.alignment is not None else w.confidence
            words.append((i in right, w.confidence, aligned))
    print(f"real validation lines {len(images)} ({', '.join(f.name for f in folders)}), "
          f"words read {len(words)}, right {sum(r for r, _, _ in words)}")  # fmt: skip
    for mix in (0.0, 0.25, 0.5, 1.0):
        scored = [(r, d ** (1 - mix) * a**mix) for r, d, a in words]
        under = [r for r, c in scored if c < below]
        over = [r for r, c in scored if c >= below]
        print(
            f"alignment share {mix}: under {below} {len(under)} words, wrong "
            f"{under.count(False) / max(1, len(under)):.3f}; at or over {len(over)}, right "
            f"{over.count(True) / max(1, len(over)):.3f}; AUROC "
            f"{auroc([c for r, c in scored if r], [c for r, c in scored if not r]):.3f}"
        )


def bench_cost(settings: Settings, images: list[bytes], rounds: int, chunk: int = 20) -> None:
    """Both pipelines read the same chunks of lines in turn (which goes first alternates),
    so that a busy host slows both alike; wall and CPU seconds (this process's, all
    threads) are summed per pipeline."""
    on = build_pipeline(settings, load_recognizer(settings))
    # HTRQ_WORD_BOXES=false: words still come, with estimated boxes.
    off = build_pipeline(
        settings, load_recognizer(settings.model_copy(update={"word_boxes": False}))
    )
    read_all(on, images[:8])
    read_all(off, images[:8])
    wall = {"with words": 0.0, "without": 0.0}
    cpu = dict(wall)
    turns = 0
    for _ in range(rounds):
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            pair = [("without", off), ("with words", on)]
            for name, pipe in pair if turns % 2 == 0 else pair[::-1]:
                w0, c0 = time.perf_counter(), time.process_time()
                read_all(pipe, part)
                wall[name] += time.perf_counter() - w0
                cpu[name] += time.process_time() - c0
            turns += 1
    n = rounds * len(images)
    for label, spent in (("wall", wall), ("CPU", cpu)):
        off_rate, on_rate = n / spent["without"], n / spent["with words"]
        print(
            f"{label}: lines/s without words {off_rate:.2f}, with words {on_rate:.2f} "
            f"({off_rate / on_rate - 1:+.1%} time per line)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=200, help="synthetic lines for boxes and cost")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real", type=Path, nargs="*", default=[], help="real line folders")
    ap.add_argument("--real-lines", type=int, default=100, help="held-out lines per folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["boxes", "calibration", "cost"], nargs="*")
    ap.add_argument("--service", action="store_true", help="boxes through a real API and worker")
    worker_arguments(ap, flush_every=16, num_beams=4, timeout=3600)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    settings = settings.model_copy(update={"num_beams": args.num_beams})
    print(f"model {settings.model}, beams {settings.num_beams}, threads {args.threads}")
    only = set(args.only or ["boxes", "calibration", "cost"])
    images, texts, truths = synthetic(args.lines, args.seed)
    recognizer = load_recognizer(settings)
    if "boxes" in only:
        if args.service:
            lines = service_lines(args, images)
        else:
            lines = pipeline_lines(build_pipeline(settings, recognizer), images)
        bench_boxes(lines, texts, truths)
    if "calibration" in only and args.real:
        bench_calibration(recognizer, args.real, args.real_lines, settings.review_below)
    if "cost" in only:
        bench_cost(settings, images, args.rounds)


if __name__ == "__main__":
    main()
