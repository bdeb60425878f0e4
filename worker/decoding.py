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


class LengthLimit(LogitsProcessor):
    """Allow only the end token once a row has produced its limit of tokens.

    ``generate`` hands processors one row per line (greedy) or per beam, lines' beams next
    to each other; the prompt is the decoder's start token alone.
    """

    def __init__(
        self,
        limits: Sequence[int],
        eos_token_id: int,
        *,
        num_beams: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        # Made on the model's device once, not copied there at every decoding step.
        self.limits = torch.tensor(limits, device=device).repeat_interleave(num_beams)
        self.eos = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        done = (input_ids.shape[1] - 1) >= self.limits
        if done.any():
            eos = scores[done, self.eos].clone()
            scores[done] = -math.inf
            scores[done, self.eos] = eos
        return scores
