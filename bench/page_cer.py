"""Page-level character error rate of the whole path: normalise, segment, crop, recognise.

    python bench/page_cer.py --real ../shared/data/real-pages/lathrop1905 --synthetic 10
    python bench/page_cer.py --model path/to/model --segmenter classical -v

A page's text is its lines joined by newlines, as the service returns it; the reference is
the ground-truth lines (ALTO Strings for real pages, the rendered text for synthetic ones)
joined the same way. Pages go through the service's own pipeline, built from settings by
``worker.recognition.reading.build_pipeline`` (HTRQ_* variables apply, as in the worker); with
``--segmenter truth`` the ground-truth line boxes are cropped instead and read by the same
line reader.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from htrq.resources import CTC_WEIGHT
from htrq.settings import load_settings
from worker.recognition.pipeline import PageInput, PageOutput, build_pipeline
from worker.segmentation import LineBox
from worker.segmentation.crops import crop_lines
from worker.segmentation.preprocess import normalise_page
from worker.segmentation.scoring import Box, alto_line_boxes, alto_line_texts
from worker.training.error_rates import edit_distance


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--real", type=Path, help="folder of page images with ALTO ground truth")
    ap.add_argument("--synthetic", type=int, default=0, help="number of synthetic pages")
    ap.add_argument("--seed", type=int, default=1000, help="first synthetic page seed")
    ap.add_argument(
        "--text",
        choices=["archive", "words"],
        default="archive",
        help="synthetic page text: the training text sampler, or plain common words",
    )
    ap.add_argument("--model", default="builtin", help="recognizer: builtin, a folder or hub id")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--segmenter",
        default="classical",
        help="classical, projection, kraken, or truth (the ground-truth line boxes: the CER "
        "left when segmentation is perfect)",
    )
    ap.add_argument("--num-beams", type=int, default=4)
    ap.add_argument("--ctc-weight", type=float, default=CTC_WEIGHT, help="0: the decoder alone")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every page's texts")
    args = ap.parse_args(argv)

    from worker.serving.app import load_recognizer

    oracle = args.segmenter == "truth"
    settings = load_settings(
        model=args.model,
        device=args.device,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        ctc_weight=args.ctc_weight,
        # No page is too large for a benchmark; the segmenter for "truth" is never used.
        max_pixels=200_000_000,
        **({} if oracle else {"segmenter": args.segmenter}),
    )
    rec = load_recognizer(settings)
    pipeline = build_pipeline(settings, rec)

    pages: list[tuple[str, str, object, list[Box]]] = []
    if args.real:
        from PIL import Image

        for xml in sorted(args.real.rglob("*.xml")):
            img = next(
                (xml.with_suffix(e) for e in (".jpg", ".png") if xml.with_suffix(e).exists()), None
            )
            if img:
                ref = "\n".join(alto_line_texts(xml))
                pages.append(("real", ref, Image.open(img), alto_line_boxes(xml)))
    if args.synthetic:
        from worker.training.synth_pages import archive_text, render_page, word_text

        for s in range(args.seed, args.seed + args.synthetic):
            p = render_page(s, text=archive_text(s) if args.text == "archive" else word_text)
            ref = "\n".join(ln.text for ln in p.lines)
            pages.append(("synthetic", ref, p.image, [ln.bbox for ln in p.lines]))

    totals: dict[str, list[float]] = {}
    for kind, ref, image, truth in pages:
        t0 = time.perf_counter()
        if oracle:
            # Ground-truth boxes are on the uploaded image: no deskew for them.
            page = normalise_page(image, max_pixels=settings.max_pixels, deskew=False)  # type: ignore[arg-type]
            crops = crop_lines(page, [LineBox(bbox=b) for b in truth], margin=settings.line_margin)
            hyp = "\n".join(text for text, _ in pipeline.read(crops))
        else:
            out = pipeline([PageInput("page", _png(image))])["page"]
            if not isinstance(out, PageOutput):
                raise SystemExit(f"{kind} page failed: {out}")
            hyp = out.text
        dt = time.perf_counter() - t0
        errors = edit_distance(ref, hyp)
        acc = totals.setdefault(kind, [0, 0, 0.0, 0])
        acc[0] += errors
        acc[1] += len(ref)
        acc[2] += dt
        acc[3] += 1
        if args.verbose:
            print(f"--- {kind} page: CER {errors / max(1, len(ref)):.3f}, {dt:.1f} s")
            print(hyp)
    print(
        f"model {args.model}, segmenter {args.segmenter}, beams {args.num_beams}, "
        f"CTC weight {rec.ctc_weight:g}"
    )
    for kind, (errors, chars, seconds, n) in totals.items():
        print(
            f"{kind:10s} pages {n:3d}  CER {errors / max(1, chars):.3f}  s/page {seconds / n:.1f}"
        )
    return 0


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
