"""A per-line length limit for ``generate``: no line reads longer than its image can hold.

A decoder that cannot read a crop (a word written at an angle, a blot, a margin note) does
not stop: it falls back on its language model and writes a sentence, and every invented
character is an error an archivist must find and delete. Handwriting holds a bounded number
of characters per line height, so each line's reading is cut off at a length its own crop
could hold, and the end token's real (low) probability then shows in the line's confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import LogitsProcessor

#: Characters a line may hold per line height. Synthetic training lines trimmed to their
#: ink hold 2.5 at the median and at most 7.7 (narrow fonts; 3,000 lines, all fonts), so a
#: line that reads right is never cut; a crop as tall as it is wide is allowed 14 characters.
MAX_CHARS_PER_HEIGHT = 10.0
#: Added to every limit, so that tiny crops (an initial, a digit) keep some room.
MIN_CHARS = 4


def length_limits(crops: Sequence[Image.Image], max_new_tokens: int) -> list[int]:
    """The most tokens (end token excluded) each prepared crop may be read as."""
    return [
        min(
            max_new_tokens, math.ceil(MAX_CHARS_PER_HEIGHT * c.width / max(1, c.height)) + MIN_CHARS
        )
        for c in crops
    ]


def token_chars(tokenizer) -> torch.Tensor | None:
    """Characters each token id writes (0 for special tokens), or None for a character
    tokenizer, where every token is one character and counting tokens is exact.

    Limits are calibrated in characters; a BPE or sentencepiece token (stock TrOCR) holds
    three to four of them on average, so counting its tokens would allow lines several times
    too long. Every id is decoded once, at load (one batched call), after a plain letter: a
    sentencepiece decoder drops the space that starts a text, so a word-start token decoded
    alone would look a character short.
    """
    special = set(tokenizer.all_special_ids)
    ids = range(len(tokenizer))
    (ref,) = tokenizer("a", add_special_tokens=False).input_ids[-1:]
    base = len(tokenizer.decode([ref], clean_up_tokenization_spaces=False))
    texts = tokenizer.batch_decode([[ref, i] for i in ids], clean_up_tokenization_spaces=False)
    counts = [0 if i in special else len(t) - base for i, t in zip(ids, texts, strict=True)]
    if all(c <= 1 for c in counts):
        return None
    return torch.tensor(counts, dtype=torch.long)


class LengthLimit(LogitsProcessor):
    """Rule out, for each row, every token that would take its text past the row's limit,
    and allow only the end token once the limit is reached.

    ``generate`` hands processors one row per line (greedy) or per beam, lines' beams next
    to each other; the prompt is the decoder's start token alone. ``chars`` (from
    :func:`token_chars`) says how many characters each token writes; without it each token
    is one character. The end token keeps the score the model gave it.
    """

    def __init__(
        self,
        limits: Sequence[int],
        eos_token_id: int,
        *,
        num_beams: int = 1,
        device: torch.device | str = "cpu",
        chars: torch.Tensor | None = None,
    ) -> None:
        # Made on the model's device once, not copied there at every decoding step.
        self.limits = torch.tensor(limits, device=device).repeat_interleave(num_beams)
        self.eos = eos_token_id
        self.chars = chars.to(device) if chars is not None else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.chars is None:
            self.chars = torch.ones(scores.shape[1], dtype=torch.long, device=scores.device)
            self.chars[self.eos] = 0
        written = self.chars[input_ids[:, 1:]].sum(1)
        remaining = self.limits - written
        too_long = self.chars[None, : scores.shape[1]] > remaining[:, None]
        too_long[remaining <= 0] = True
        too_long[:, self.eos] = False
        if too_long.any():
            scores = scores.masked_fill(too_long, -math.inf)
        return scores
