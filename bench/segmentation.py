"""Line detection quality and speed: precision, recall, F1 at IoU >= 0.5, seconds per page.

    python bench/segmentation.py --real ../shared/data/real-pages/lathrop1905 --synthetic 30
    python bench/segmentation.py --methods classical,kraken ...   # kraken needs its own venv

Real pages: every ``*.xml`` (ALTO) under ``--real`` with a same-named ``.jpg``/``.png`` beside
it. Synthetic pages: ``worker.training.synth_pages`` seeds ``--seed`` .. ``--seed + N - 1``.
Pages go through ``normalise_page`` (as in the service, deskew included) before segmentation;
found lines are mapped back onto the uploaded image (``to_source_frame``) before scoring.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.segmentation import Segmenter, make_segmenter
from worker.segmentation.crops import to_source_frame
from worker.segmentation.preprocess import SKEW_INFO_KEY, normalise_page
from worker.segmentation.scoring import Box, Score, alto_line_boxes, match

MAX_PIXELS = 200_000_000


def real_pages(directory: Path) -> Iterator[tuple[str, Image.Image, list[Box]]]:
    for xml in sorted(directory.rglob("*.xml")):
        for ext in (".jpg", ".jpeg", ".png", ".tif"):
            img = xml.with_suffix(ext)
            if img.exists():
                yield xml.stem, Image.open(img), alto_line_boxes(xml)
                break


def synthetic_pages(
    n: int, seed: int, text: str = "words"
) -> Iterator[tuple[str, Image.Image, list[Box]]]:
    from worker.training.synth_pages import archive_text, render_page, word_text

    for s in range(seed, seed + n):
        page = render_page(s, text=archive_text(s) if text == "archive" else word_text)
        yield f"synth-{s}", page.image, [ln.bbox for ln in page.lines]


def evaluate(
    segmenter: Segmenter,
    pages: Iterator[tuple[str, Image.Image, list[Box]]],
    *,
    verbose: bool,
) -> tuple[Score, float, int]:
    total, seconds, n = Score(0, 0, 0), 0.0, 0
    for name, image, truth in pages:
        page = normalise_page(image, max_pixels=MAX_PIXELS)
        t0 = time.perf_counter()
        lines = segmenter(page)
        seconds += time.perf_counter() - t0
        # Compare on the uploaded image, as the exports report it.
        lines = to_source_frame(lines, page.info.get(SKEW_INFO_KEY, 0.0), page.size)
        n += 1
        score = match([ln.bbox for ln in lines], truth)
        total += score
        if verbose:
            print(
                f"    {name:32s} P={score.precision:.3f} R={score.recall:.3f} "
                f"F1={score.f1:.3f} found={score.predicted} truth={score.expected}"
            )
    return total, seconds, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--real", type=Path, help="folder of page images with ALTO ground truth")
    ap.add_argument("--synthetic", type=int, default=0, help="number of synthetic pages")
    ap.add_argument("--seed", type=int, default=1000, help="first synthetic page seed")
    ap.add_argument(
        "--text",
        choices=["words", "archive"],
        default="words",
        help="synthetic page text: plain common words (full lines), or the training text "
        "sampler (names, dates, amounts: lines of very uneven length)",
    )
    ap.add_argument("--methods", default="classical", help="comma list: classical, kraken")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every page")
    args = ap.parse_args(argv)

    sets: list[tuple[str, Callable[[], Iterator[tuple[str, Image.Image, list[Box]]]]]] = []
    if args.real:
        sets.append((f"real ({args.real.name})", lambda: real_pages(args.real)))
    if args.synthetic:
        sets.append(
            (
                f"synthetic {args.text} x{args.synthetic}",
                lambda: synthetic_pages(args.synthetic, args.seed, args.text),
            )
        )
    if not sets:
        ap.error("give --real DIR and/or --synthetic N")

    print(f"{'method':10s} {'pages':24s} {'n':>3s} {'P':>6s} {'R':>6s} {'F1':>6s} {'s/page':>7s}")
    for method in args.methods.split(","):
        segmenter = make_segmenter(method.strip())
        for label, pages in sets:
            score, seconds, n = evaluate(segmenter, pages(), verbose=args.verbose)
            print(
                f"{method:10s} {label:24s} {n:3d} {score.precision:6.3f} {score.recall:6.3f} "
                f"{score.f1:6.3f} {seconds / max(n, 1):7.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
