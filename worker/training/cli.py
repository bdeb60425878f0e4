"""``htrq train``, ``eval``, ``synth``, ``average`` and ``corrections export``, registered by
``htrq.cli``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from htrq.cli import database, progress
from htrq.resources import CTC_WEIGHT, REVIEW_BELOW
from htrq.settings import load_settings, stretches_text


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _weighted_folder(text: str) -> tuple[Path, float]:
    folder, _, weight = text.partition("=")
    try:
        value = float(weight) if weight else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight must be a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"weight must not be negative: {text!r}")
    return Path(folder), value


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    import torch

    from worker.training.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    best = train(
        TrainConfig(
            out_dir=args.out,
            export_dir=args.export,
            init=args.init,
            design=args.design,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            schedule=args.schedule,
            eval_every=args.eval_every,
            save_every=args.save_every,
            keep_checkpoints=args.keep,
            lines=args.lines,
            synthetic_weight=0.0 if args.no_synthetic else args.synthetic_weight,
            val_real_lines=args.val_real_lines,
            augment=args.augment,
            workers=args.workers,
            seed=args.seed,
            ctc_weight=args.ctc_weight,
            ctc_head_warmup=args.ctc_head_warmup,
            stem_only_steps=args.stem_only_steps,
            curriculum_steps=args.curriculum_steps,
            distort=not args.no_distort,
            precision=args.precision,
        )
    )
    print(f"best model: {best}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from PIL import Image

    from worker.recognition.recognizer import Recognizer
    from worker.training.data import read_column, read_lines_tsv
    from worker.training.evaluate import evaluate

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pairs = read_lines_tsv(args.dir)[: args.limit or None]
    samples = [(Image.open(p).convert("L"), t) for p, t in pairs]
    groups = read_column(args.dir, args.by)[: len(samples)] if args.by else None
    rows = []
    runs = [
        (w, beams, batch, ww, wf)
        for w in _floats(args.ctc_weight)
        for beams in _ints(args.beams)
        for batch in _ints(args.batch_size)
        for ww in _floats(args.word_weight)
        for wf in _floats(args.word_floor)
    ]
    for weight, beams, batch, word_weight, word_floor in runs:
        rec = Recognizer.load(
            model=args.model,
            device=args.device,
            batch_size=batch,
            num_beams=beams,
            max_new_tokens=args.max_new_tokens,
            ctc_weight=weight,
            quantize=args.quantize,
            stretches=_floats(args.stretches),
            language=args.language,
            word_weight=word_weight,
            word_floor=word_floor,
        )
        res = evaluate(
            rec,
            samples,
            review_below=args.review_below,
            groups=groups,
            sweep=_floats(args.review_sweep) if args.review_sweep else (),
        )
        stretches = stretches_text(rec.stretches)
        rows.append(
            {
                "ctc_weight": rec.ctc_weight,
                "beams": beams,
                "batch": batch,
                "stretches": stretches,
                "language": args.language,
                "word_weight": word_weight,
                "word_floor": word_floor,
                **asdict(res),
            }
        )
        print(
            f"ctc={rec.ctc_weight:g} beams={beams} batch={batch} stretches={stretches} "
            f"language={args.language} words={word_weight:g}/{word_floor:g} "
            f"lines={res.lines} "
            f"CER={res.cer:.4f} WER={res.wer:.4f} "
            f"lines/s={res.lines_per_s:.1f} lines/cpu-s={res.lines_per_cpu_s:.1f} "
            f"conf(exact)={res.conf_exact:.3f} "
            f"conf(wrong)={res.conf_wrong:.3f} CER(bottom 10% conf)={res.low_conf_cer:.4f} "
            f"ratio={res.low_conf_ratio:.2f} | below {res.review_below}: "
            f"{res.flagged:.0%} of lines, {res.flagged_wrong:.0%} of them wrong; "
            f"CER of the rest={res.unflagged_cer:.4f}",
            flush=True,
        )
        for group, (n, group_cer) in res.by_group.items():
            print(f"  {args.by}={group} lines={n} CER={group_cer:.4f}", flush=True)
        for below, flagged, flagged_wrong, rest in res.review_sweep:
            print(
                f"  below {below:g}: {flagged:.0%} of lines, {flagged_wrong:.0%} of them wrong; "
                f"CER of the rest={rest:.4f}",
                flush=True,
            )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    return 0


def cmd_lexicon(args: argparse.Namespace) -> int:
    from worker.training.lexicon import build_lexicon

    out = build_lexicon(
        args.language,
        args.out,
        folders=args.lines,
        top=args.top,
        transcription_share=args.transcription_share,
    )
    print(f"wrote {out}")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from worker.training.average import average_checkpoints

    print(average_checkpoints(args.checkpoints, args.out))
    return 0


def cmd_enlarge(args: argparse.Namespace) -> int:
    from worker.training.reshape import enlarge_input

    print(enlarge_input(args.model, args.out, factor=args.factor))
    return 0


def cmd_graft(args: argparse.Namespace) -> int:
    from worker.training.reshape import graft_conv_stem

    print(f"wrote {graft_conv_stem(args.model, args.out, args.design)}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from worker.training.data import render_eval_set_in_fonts, write_lines_tsv
    from worker.training.synth import load_fonts, split_fonts

    train_fonts, held = split_fonts(load_fonts())
    fonts = {"held-out": held, "train": train_fonts, "all": train_fonts + held}[args.fonts]
    lines = render_eval_set_in_fonts(args.n, fonts, seed=args.seed, max_chars=args.max_chars)
    samples = [(im, text) for im, text, _ in lines]
    print(write_lines_tsv(samples, args.dir, fonts=[font.name for _, _, font in lines]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a line model (synthetic and/or lines.tsv data)"
    )
    p.add_argument(
        "--init",
        default="scratch",
        help="'scratch', or a checkpoint directory or hub id to fine-tune "
        "(e.g. microsoft/trocr-small-handwritten)",
    )
    p.add_argument(
        "--design",
        default="vit32",
        choices=["vit32", "vit64", "conv64"],
        help="the shape of a model trained from scratch (see the model card's design study)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/train"), help="checkpoints; re-run to resume"
    )
    p.add_argument(
        "--export",
        type=Path,
        default=Path("runs/train/best"),
        help="where each best model is written",
    )
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=400)
    p.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="learning rate after warm-up: cosine to 0, or constant (for checkpoint averaging)",
    )
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument(
        "--keep",
        type=int,
        default=2,
        help="checkpoints kept (the newest); keep more to average them with htrq average",
    )
    p.add_argument(
        "--lines",
        type=_weighted_folder,
        action="append",
        default=[],
        metavar="DIR[=WEIGHT]",
        help="lines.tsv folder of real lines and its sampling weight (default 1), relative to "
        "--synthetic-weight (repeatable). Split by its writer_or_document column: whole "
        "writers are held out for validation",
    )
    p.add_argument(
        "--synthetic-weight",
        type=float,
        default=1.0,
        help="sampling weight of synthetic lines beside the --lines folders (0: real only)",
    )
    p.add_argument("--no-synthetic", action="store_true", help="same as --synthetic-weight 0")
    p.add_argument(
        "--val-real-lines",
        type=int,
        default=120,
        help="lines of held-out writers validated per --lines folder",
    )
    p.add_argument(
        "--augment",
        type=float,
        default=1.0,
        help="strength of scan augmentation of real lines (turns, slant, elastic warp, "
        "contrast, blur, noise, faded ink, bleed-through); 0 turns it off",
    )
    p.add_argument(
        "--no-distort",
        action="store_true",
        help="render synthetic lines without bent strokes and pen changes (the recipe before "
        "19,000 steps)",
    )
    p.add_argument(
        "--stem-only-steps",
        type=int,
        default=0,
        help="steps for which only a grafted conv stem learns (see htrq graft-stem)",
    )
    p.add_argument("--workers", type=int, default=1, help="data-loader processes rendering lines")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 on a GPU that has it, else fp32; bf16 on a CPU pays only where the "
        "cores have bf16 instructions (AVX512_BF16, AMX): measure first",
    )
    p.add_argument(
        "--ctc-weight",
        type=float,
        default=0.3,
        help="auxiliary CTC loss weight on the encoder (0: off)",
    )
    p.add_argument(
        "--ctc-head-warmup",
        type=int,
        default=300,
        help="steps a new CTC head on a trained model learns before its gradient reaches the "
        "encoder (a head saved with --init's model needs none)",
    )
    p.add_argument(
        "--curriculum-steps",
        type=int,
        default=3000,
        help="steps over which the line length grows from 12 to 48 characters "
        "(0 when resuming a model that already reads long lines)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="CER, WER, speed and confidence quality on a lines.tsv folder")
    p.add_argument("dir", type=Path)
    p.add_argument("--model", default="builtin")
    p.add_argument("--device", default="cpu")
    p.add_argument("--beams", default="1,4", help="comma-separated beam counts")
    p.add_argument(
        "--ctc-weight",
        default=str(CTC_WEIGHT),
        help="comma-separated shares of the CTC head's score in decoding (0: the decoder alone; "
        "ignored for models without a head)",
    )
    p.add_argument("--batch-size", default="32", help="comma-separated batch sizes")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--language",
        default="none",
        help="the lexicon that steers decoding (en, fr, …; none: the glyphs alone)",
    )
    p.add_argument(
        "--word-weight", default="0.3", help="comma-separated weights of the lexicon's bonus"
    )
    p.add_argument(
        "--word-floor", default="0.1", help="comma-separated floors (what leaving it costs)"
    )
    p.add_argument("--limit", type=int, default=0)
    p.add_argument(
        "--review-below",
        type=float,
        default=REVIEW_BELOW,
        help="confidence threshold to report the needs_review figures for (default: the API's)",
    )
    p.add_argument(
        "--review-sweep",
        metavar="T1,T2,...",
        help="also report the needs_review figures for each of these thresholds (to choose "
        "HTRQ_REVIEW_BELOW for a model)",
    )
    p.add_argument(
        "--by",
        metavar="COLUMN",
        help="also report CER for each value of this lines.tsv column (htrq synth writes 'font')",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="int8: dynamic int8 quantization of the linear layers (CPU)",
    )
    p.add_argument(
        "--stretches",
        metavar="F1,F2,...",
        default="1",
        help="read each line at these widths and keep the likeliest reading (HTRQ_STRETCHES)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "average",
        help="average the weights of checkpoints of one run into a model (often reads better "
        "than the best single one: evaluate both)",
    )
    p.add_argument("out", type=Path, help="model folder to write")
    p.add_argument(
        "checkpoints",
        type=Path,
        nargs="+",
        help="checkpoint or exported model folders of the same architecture",
    )
    p.set_defaults(func=cmd_average)

    p = sub.add_parser(
        "enlarge-input",
        help="write a model whose input and patches are FACTOR times larger (32x384 -> 64x768) "
        "and which reads as before, to fine-tune on the finer detail",
    )
    p.add_argument("model", type=Path, help="model folder (ViT encoder)")
    p.add_argument("out", type=Path, help="model folder to write")
    p.add_argument("--factor", type=int, default=2)
    p.set_defaults(func=cmd_enlarge)

    p = sub.add_parser("synth", help="render synthetic handwriting lines into a lines.tsv folder")
    p.add_argument("dir", type=Path)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--fonts", choices=["held-out", "train", "all"], default="held-out")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--max-chars", type=int, default=48)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "lexicon",
        help="build a language's lexicon for the word prior (wordfreq + training transcriptions)",
    )
    p.add_argument("out", type=Path, help="file to write (<language>.tsv.gz)")
    p.add_argument("--language", required=True, help="wordfreq's language code (en, fr, de, …)")
    p.add_argument(
        "--lines",
        action="append",
        type=Path,
        default=[],
        help="a lines.tsv folder of that language whose training writers' words are added",
    )
    p.add_argument("--top", type=int, default=80_000, help="words kept")
    p.add_argument(
        "--transcription-share",
        type=float,
        default=0.3,
        help="share of the mass given to the transcriptions' words",
    )
    p.set_defaults(func=cmd_lexicon)

    p = sub.add_parser(
        "graft-stem",
        help="give a ViT line model a convolutional stem (a taller input), keeping its layers",
    )
    p.add_argument("model", type=Path, help="model folder (ViT encoder, one row of patches)")
    p.add_argument("out", type=Path, help="model folder to write")
    p.add_argument("--design", default="conv64", choices=["conv64"])
    p.set_defaults(func=cmd_graft)


# -- trainer ----------------------------------------------------------------------------------


def cmd_trainer(args: argparse.Namespace) -> int:
    from htrq.cli import need
    from worker.training.trainer import serve

    settings = load_settings()
    need(settings, "database_url", "broker_url")
    serve(settings, loglevel=args.loglevel, hostname=args.hostname)
    return 0


def register_trainer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trainer",
        help="train tenant models (POST /v1/models) from the trainers' queue, one at a time",
    )
    p.add_argument("--loglevel", default="info")
    p.add_argument("--hostname", help="Celery node name")
    p.set_defaults(func=cmd_trainer)


# -- corrections export -----------------------------------------------------------------------


def cmd_corrections_export(args: argparse.Namespace) -> int:
    from htrq.storage import open_store
    from htrq.tenants import UnknownTenant

    # The worker's image code (OpenCV): crops are cut exactly as the worker cut them.
    from worker.training.reviewed_lines import export_corrections

    settings = load_settings()
    with database(settings) as sessions:
        try:
            report = export_corrections(
                sessions=sessions,
                storage=open_store(settings),
                settings=settings,
                out=args.out,
                tenant=args.tenant,
                since=args.since,
            )
        except UnknownTenant as exc:
            print(f"htrq: {exc}", file=sys.stderr)
            return 1
    for problem in report.skipped:
        progress(f"skipped {problem}")
    empty = f", {report.empty} empty left out" if report.empty else ""
    progress(f"{report.lines} lines of {report.pages} pages in {report.jobs} jobs{empty}")
    print(report.path)
    return 0


def _since(text: str) -> datetime:
    """An ISO date or time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date such as 2026-12-01 or 2026-12-01T14:00: {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def register_corrections(sub: argparse._SubParsersAction) -> None:
    corrections = sub.add_parser("corrections", help="people's corrections (on the database)")
    cs = corrections.add_subparsers(dest="corrections_command", required=True)
    p = cs.add_parser(
        "export",
        help="write the corrected and reviewed lines as crops and lines.tsv, for htrq train "
        "--lines OUT (needs the worker extra); prints the lines.tsv path",
    )
    p.add_argument("out", type=Path, help="folder for the crops and lines.tsv (made if new)")
    p.add_argument("--tenant", help="only this tenant's jobs (default: every tenant's)")
    p.add_argument(
        "--since", type=_since, help="only lines checked at or after this date or time (UTC)"
    )
    p.set_defaults(func=cmd_corrections_export)
