"""Build a language's lexicon for the word prior (``worker.recognition.word_prior``).

Two sources, both redistributable: ``wordfreq``'s word frequencies (Robyn Speer et al.;
data CC BY-SA 4.0, code Apache-2.0), which know the words of today's language, and the
training transcriptions of that language, which know the words of the archives the model
learned from (old spellings, abbreviations, the names in Hooker's letters). Only the
*training* writers' lines are counted: the writers held out for validation (split as
``htrq train`` splits them) never reach the lexicon, so tuning the prior on them stays
honest. The 1905 evaluation sets and the collection reserved for adaptation are never read.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from worker.recognition.word_prior import letter_runs
from worker.training.writers import split_collection

#: Folders that must never feed a shipped lexicon (evaluation-only or reserved).
FORBIDDEN = ("lathrop1905", "peraire_celestine_fr")


def wordfreq_counts(language: str, top: int) -> Counter[str]:
    """The ``top`` most frequent words of ``language`` by wordfreq, cut into letter runs,
    as relative frequencies."""
    from wordfreq import get_frequency_dict

    freqs = get_frequency_dict(language, wordlist="best")
    best = sorted(freqs.items(), key=lambda kv: -kv[1])[:top]
    out: Counter[str] = Counter()
    for word, f in best:
        for run in letter_runs(word):
            out[run] += f
    return out


def transcription_counts(folders: Iterable[Path], val_lines: int = 100) -> Counter[str]:
    """Word counts of the training writers' lines of each ``lines.tsv`` folder."""
    out: Counter[str] = Counter()
    for folder in folders:
        if any(name in str(folder) for name in FORBIDDEN):
            raise ValueError(f"{folder} is evaluation-only or reserved; it never feeds a lexicon")
        split = split_collection(Path(folder), writable=lambda _: True, val_lines=val_lines)
        for _, text in split.train:
            out.update(letter_runs(text))
    return out


def _share(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {w: n / total for w, n in counts.items()} if total else {}


def build_lexicon(
    language: str,
    out: Path,
    *,
    folders: Iterable[Path] = (),
    top: int = 80_000,
    transcription_share: float = 0.3,
) -> Path:
    """Write ``out`` (``word<TAB>count``, gzip): wordfreq's ``top`` words mixed with the
    transcriptions' words, the latter holding ``transcription_share`` of the mass."""
    web = _share(wordfreq_counts(language, top))
    lines = _share(transcription_counts(folders))
    share = transcription_share if lines else 0.0
    mixed: dict[str, float] = {}
    for w, f in web.items():
        mixed[w] = (1 - share) * f
    for w, f in lines.items():
        mixed[w] = mixed.get(w, 0.0) + share * f
    ranked = sorted(mixed.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        for word, f in ranked:
            n = round(f * 1e9)
            if n >= 1:
                fh.write(f"{word}\t{n}\n")
    return out
