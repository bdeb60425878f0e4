"""What the word prior does to words outside its lexicon (names, numbers, old spellings).

Reads writer-disjoint validation lines (``lines.tsv`` folders, one language each) with the
lexicon off and on, then counts, over the reference's words that the lexicon does not hold
(a word is a run of letters, as the prior cuts them, or a number): how many the model read
right without the prior and wrong with it (forced), and the reverse (rescued); and prints
lines that hold such words, before and after. Never run it on the 1905 evaluation sets to
choose anything.

    .venv/bin/python bench/word_prior_lines.py runs/valreal/hooker_en:en \
        runs/valreal/copiste_dun_jour_fr:fr --weight 0.3 --show 8
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from worker.recognition.reading import line_reader
from worker.recognition.recognizer import Recognizer
from worker.recognition.word_prior import letter_runs, shipped_lexicon
from worker.training.data import read_lines_tsv
from worker.training.error_rates import cer

TOKEN = re.compile(r"[^\W\d_]+|\d+")


def oov_tokens(text: str, words: dict[str, float]) -> list[str]:
    """The reference's numbers and the letter runs its lexicon lacks, lower-cased."""
    out = []
    for tok in TOKEN.findall(text):
        if tok.isdigit():
            out.append(tok)
        else:
            out.extend(r for r in letter_runs(tok) if r not in words)
    return out


def read(rec: Recognizer, images: list[Image.Image], language: str) -> list[str]:
    return [r[0] if r else "" for r in line_reader(rec)(images, language)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="+", help="FOLDER:LANGUAGE")
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--weight", type=float, default=0.3)
    ap.add_argument("--floor", type=float, default=0.1)
    ap.add_argument("--show", type=int, default=6, help="lines to print per set")
    args = ap.parse_args()
    for spec in args.sets:
        folder, language = spec.rsplit(":", 1)
        pairs = read_lines_tsv(Path(folder))
        images = [Image.open(p).convert("L") for p, _ in pairs]
        refs = [t for _, t in pairs]
        common = {"model": args.model, "num_beams": args.beams, "batch_size": 32}
        off = read(Recognizer.load(**common), images, "none")
        on = read(
            Recognizer.load(
                **common, language=language, word_weight=args.weight, word_floor=args.floor
            ),
            images,
            language,
        )
        words = shipped_lexicon(language).words
        forced = rescued = kept = total = 0
        shown = 0
        print(f"== {folder} ({language}): CER {cer(refs, off):.4f} -> {cer(refs, on):.4f}")
        for ref, a, b in zip(refs, off, on, strict=True):
            oov = oov_tokens(ref, words)
            if not oov:
                continue
            seen_a = set(t.lower() for t in TOKEN.findall(a))
            seen_b = set(t.lower() for t in TOKEN.findall(b))
            for tok in oov:
                total += 1
                in_a, in_b = tok in seen_a, tok in seen_b
                forced += in_a and not in_b
                rescued += in_b and not in_a
                kept += in_a and in_b
            if shown < args.show and a != b:
                shown += 1
                print(
                    f"  truth : {ref}\n  off   : {a}\n  on    : {b}\n  outside the lexicon: {oov}"
                )
        print(
            f"  {total} reference words outside the lexicon (or numbers): read right with "
            f"and without {kept}, lost with the prior {forced}, gained with it {rescued}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
