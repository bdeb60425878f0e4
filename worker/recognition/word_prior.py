"""Words at decoding: a lexicon of a language steers the beam search towards its words.

The line model judges a reading by the glyphs and by what it learned of ~20k transcribed
lines; it knows few words. Correcting its readings to dictionary words *after* decoding does
not work (errors are too dense: replacing each out-of-lexicon word of stage 8f's readings by
the nearest frequent word took held-out CER from 0.267 to 0.270). So the lexicon joins the
search itself, as a ``LogitsProcessor`` beside the CTC prefix score: each candidate character
gets a bonus

    weight * (log P_lex(c | the word so far) - log P_base(c))

where ``P_lex`` is a prefix-tree model of the language's words (how many of the words that
start with "sta" continue with "n", or end there) mixed with a little of ``P_base``, and
``P_base`` is a word-blind model of letters (their frequencies, and how often words end).
The difference is a likelihood ratio, and that is what keeps names, numbers and old
spellings safe: a character outside every word of the lexicon costs ``log(floor)`` once,
where the word leaves the lexicon, and from then on that word gets no bonus and no penalty,
so a line reads as the model alone would read it. Digits and punctuation are not letters:
they end a word and get no opinion of their own.

Lexicons are word counts (``word<TAB>count``, gzip), built by ``htrq lexicon`` from
``wordfreq``'s lists and the training transcriptions (``worker/training/lexicon.py``), and
shipped in ``worker/lexicons/``.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from transformers import LogitsProcessor

#: Lexicons shipped with htrq, one ``<language>.tsv.gz`` each.
LEXICON_DIR = Path(__file__).parents[1] / "lexicons"


def letter_runs(text: str) -> list[str]:
    """The maximal runs of letters in ``text``, lower-cased: the words the prior judges.

    "l'étoffe" gives "l" and "étoffe", "don't" "don" and "t", "1905" nothing: the same cut
    is applied to the lexicon's entries when it is built and to the readings when they are
    scored, so both sides agree on what a word is.
    """
    runs, cur = [], []
    for ch in text:
        if ch.isalpha():
            cur.append(ch.lower())
        elif cur:
            runs.append("".join(cur))
            cur = []
    if cur:
        runs.append("".join(cur))
    return runs


class Lexicon:
    """Word frequencies of one language, as a prefix tree of counts."""

    def __init__(self, language: str, counts: Mapping[str, float]) -> None:
        self.language = language
        #: f(w): how often each word occurs.
        self.words: dict[str, float] = {}
        for word, n in counts.items():
            for run in letter_runs(word):
                self.words[run] = self.words.get(run, 0.0) + float(n)
        #: N(p): how often words starting with p occur ("" is every word).
        self.prefixes: dict[str, float] = {}
        letters: dict[str, float] = {}
        chars = 0.0
        for word, n in self.words.items():
            for i in range(len(word) + 1):
                p = word[:i]
                self.prefixes[p] = self.prefixes.get(p, 0.0) + n
            for ch in word:
                letters[ch] = letters.get(ch, 0.0) + n
            chars += n * len(word)
        total = self.prefixes.get("", 0.0)
        if total <= 0:
            raise ValueError(f"the {language!r} lexicon has no words")
        #: The word-blind baseline: a word ends after a letter with probability ``end``
        #: (1 / mean word length), and each letter is drawn by its frequency.
        self.end = total / chars
        self.letters = {ch: n / chars for ch, n in letters.items()}
        #: Baseline for a letter the lexicon never writes (a rare accent, a Greek letter).
        self.unseen = 0.5 / chars
        self.bonus = lru_cache(maxsize=1 << 18)(self._bonus)

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def load(cls, path: str | Path, language: str | None = None) -> Lexicon:
        """Read ``word<TAB>count`` lines (gzip when the name ends in .gz)."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        counts: dict[str, float] = {}
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                word, _, n = line.rstrip("\n").partition("\t")
                if word and n:
                    counts[word] = counts.get(word, 0.0) + float(n)
        return cls(language or path.name.split(".")[0], counts)

    def _bonus(self, prefix: str, char: str | None, floor: float) -> float:
        """log P_lex(char | prefix) - log P_base(char) for a letter, or for the word's end
        when ``char`` is None; 0 once ``prefix`` has left the lexicon."""
        n = self.prefixes.get(prefix)
        if n is None:
            return 0.0
        if char is None:
            lex = self.words.get(prefix, 0.0) / n
            base = self.end
        else:
            lex = self.prefixes.get(prefix + char, 0.0) / n
            base = (1.0 - self.end) * self.letters.get(char, self.unseen)
        return math.log((1.0 - floor) * lex + floor * base) - math.log(base)

    def score(self, text: str, floor: float) -> float:
        """The summed bonus of a whole text, as the search adds it up character by
        character (for tests and for reading what the prior thinks of a line)."""
        total, word = 0.0, ""
        for ch in text:
            if ch.isalpha():
                total += self.bonus(word, ch.lower(), floor)
                word += ch.lower()
            elif word:
                total += self.bonus(word, None, floor)
                word = ""
        if word:
            total += self.bonus(word, None, floor)
        return total


def available_languages(folder: Path = LEXICON_DIR) -> list[str]:
    return sorted(p.name.split(".")[0] for p in folder.glob("*.tsv.gz"))


@lru_cache(maxsize=8)
def shipped_lexicon(language: str) -> Lexicon:
    """The lexicon htrq ships for ``language`` (loaded once per process)."""
    path = LEXICON_DIR / f"{language}.tsv.gz"
    if not path.is_file():
        known = ", ".join(available_languages()) or "none"
        raise ValueError(f"no lexicon for language {language!r} (shipped: {known})")
    return Lexicon.load(path, language)


def token_texts(tokenizer) -> list[str]:
    """The text each token id writes when it follows other text ("" for special tokens).

    Decoded after a plain letter, as ``worker.recognition.decoding.token_chars`` does: a
    sentencepiece or byte-level BPE token that starts a word carries its space only there.
    """
    special = set(tokenizer.all_special_ids)
    ids = range(len(tokenizer))
    (ref,) = tokenizer("a", add_special_tokens=False).input_ids[-1:]
    base = tokenizer.decode([ref], clean_up_tokenization_spaces=False)
    texts = tokenizer.batch_decode([[ref, i] for i in ids], clean_up_tokenization_spaces=False)
    return ["" if i in special else t[len(base) :] for i, t in zip(ids, texts, strict=True)]


class WordPrior(LogitsProcessor):
    """Adds ``weight`` times the lexicon's bonus to each row's likeliest candidates.

    Only the ``candidates`` best-scored tokens of a row are judged (the others cannot win a
    beam unless the bonus lifted them a long way, and judging the whole vocabulary at every
    step would cost more than the reading); tokens already ruled out (-inf) stay so. The end
    token ends the word in progress.
    """

    def __init__(
        self,
        lexicon: Lexicon,
        texts: Sequence[str],
        *,
        eos: int,
        weight: float,
        floor: float = 0.1,
        candidates: int = 8,
    ) -> None:
        if weight <= 0:
            raise ValueError(f"the word prior's weight must be above 0, not {weight}")
        if not 0 < floor < 1:
            raise ValueError(f"the word prior's floor must lie in (0, 1), not {floor}")
        self.lexicon, self.texts, self.eos = lexicon, list(texts), eos
        self.weight, self.floor, self.candidates = weight, floor, candidates

    def current_word(self, ids: Iterable[int]) -> str:
        """The letters written since the last non-letter (lower-cased), from the end."""
        out: list[str] = []
        for tok in reversed(list(ids)):
            text = self.texts[tok] if tok < len(self.texts) else ""
            for ch in reversed(text):
                if not ch.isalpha():
                    return "".join(reversed(out)).lower()
                out.append(ch)
        return "".join(reversed(out)).lower()

    def token_bonus(self, word: str, token: int) -> float:
        if token == self.eos:
            return self.lexicon.bonus(word, None, self.floor) if word else 0.0
        total = 0.0
        for ch in self.texts[token] if token < len(self.texts) else "":
            if ch.isalpha():
                total += self.lexicon.bonus(word, ch.lower(), self.floor)
                word += ch.lower()
            elif word:
                total += self.lexicon.bonus(word, None, self.floor)
                word = ""
        return total

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.candidates, scores.shape[1])
        top = scores.topk(k, -1)
        bonus = torch.zeros_like(top.values)
        for row, (ids, tokens) in enumerate(
            zip(input_ids.tolist(), top.indices.tolist(), strict=True)
        ):
            word = self.current_word(ids[1:])  # the start token writes nothing
            for j, tok in enumerate(tokens):
                bonus[row, j] = self.token_bonus(word, tok)
        finite = torch.isfinite(top.values)
        lifted = torch.where(finite, top.values + self.weight * bonus, top.values)
        return scores.scatter(1, top.indices, lifted)
