"""Joint CTC/attention decoding: the encoder's CTC head scores every prefix the decoder
proposes, as a ``LogitsProcessor`` for ``generate`` (greedy or beam search).

The attention decoder alone may drop a letter, repeat one or read a word its language prior
likes better than the ink; CTC's alignment is monotonic over the line's patches, so it
gives little probability to a prefix that skips or invents ink. Each candidate token ``c``
after prefix ``g`` scores ``(1 - w) * log p_att(c | g) + w * (log P_ctc(g c ...) - log
P_ctc(g ...))`` where ``P_ctc(h ...)`` is the CTC probability that the line's reading starts
with ``h`` (Watanabe et al., "Hybrid CTC/Attention Architecture for End-to-End Speech
Recognition", 2017, algorithm 2), and the end token gets CTC's probability of the whole
prefix. Summed over the steps of a hypothesis these add up to the weighted joint score.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LogitsProcessor

#: The CTC head over the encoder's patches, saved beside a model by ``htrq train`` (it is no
#: part of ``VisionEncoderDecoderModel``, so ``from_pretrained`` never reads it).
CTC_HEAD_FILE = "ctc_head.safetensors"


def load_ctc_head(model_dir: str | Path) -> torch.nn.Linear | None:
    """The CTC head saved in ``model_dir``, shaped as its saved weights are, or None where
    it has none (a hub id, a model trained without CTC such as ``microsoft/trocr-*``)."""
    saved = Path(model_dir) / CTC_HEAD_FILE
    if not saved.is_file():
        return None
    weights = load_file(saved)
    vocab, hidden = weights["weight"].shape
    head = torch.nn.Linear(hidden, vocab)
    head.load_state_dict(weights)
    return head


class CTCPrefixScore(LogitsProcessor):
    """Mix the CTC prefix score into each step's scores.

    ``ctc_logp`` holds the CTC head's log-probabilities, one row per line (``(lines, frames,
    vocab)``); ``generate`` hands the processor ``num_beams`` rows per line, next to each
    other. Only each row's ``candidates`` likeliest tokens by the decoder, and the end token,
    are scored and may be chosen (the partial scoring of ESPnet: the prefix recursion over
    every frame is the cost, and a token the decoder ranks below them is never the answer).
    Tokens that are neither characters nor the end token (the blank, ``never``) are ruled out.
    """

    def __init__(
        self,
        ctc_logp: torch.Tensor,
        *,
        blank: int,
        eos: int,
        weight: float,
        num_beams: int = 1,
        candidates: int = 12,
        never: tuple[int, ...] = (),
    ) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"the CTC weight must lie in (0, 1], not {weight}")
        # (frames, rows, vocab): the recursion runs over frames.
        self.x = ctc_logp.float().repeat_interleave(num_beams, 0).transpose(0, 1).contiguous()
        self.blank, self.eos, self.weight = blank, eos, weight
        self.num_beams = num_beams
        self.candidates = min(candidates, self.x.shape[2])
        self.never = [blank, *never]
        #: log P(blanks only through frame t): the empty prefix's b, and every b's base.
        self.blanks = torch.cumsum(self.x[:, :, blank], 0)
        #: The last step's scored tokens of each row and their (n, b, psi) forward variables.
        self.prev: tuple[torch.Tensor, ...] | None = None
        self.prev_ids: list[tuple[int, ...]] = []

    def _state(self, input_ids: torch.Tensor):
        """(n, b, psi, last) of each row's prefix: CTC's forward variables of the prefix
        ending in a non-blank / blank at every frame, its prefix score and last token."""
        frames, rows, _ = self.x.shape
        dev = self.x.device
        if self.prev is None:  # the start token alone: the empty prefix
            r_n = torch.full((frames, rows), -math.inf, device=dev)
            none = torch.full((rows,), -1, device=dev)  # no last token
            return r_n, self.blanks, torch.zeros(rows, device=dev), none
        tokens, cand_n, cand_b, cand_psi = self.prev
        last = input_ids[:, -1]
        if self.num_beams == 1:
            parent = torch.arange(rows, device=dev)
        else:  # beams are re-ordered between steps: find each row's prefix a step ago
            where = {(j // self.num_beams, ids): j for j, ids in enumerate(self.prev_ids)}
            parent = torch.tensor(
                [
                    where[(i // self.num_beams, tuple(ids))]
                    for i, ids in enumerate(input_ids[:, :-1].tolist())
                ],
                device=dev,
            )
        hit = tokens[parent] == last[:, None]  # (rows, candidates): where the chosen token is
        found = hit.any(1)
        col = hit.float().argmax(1)
        r_n = cand_n[:, parent, col]
        r_b = cand_b[:, parent, col]
        psi = torch.where(found, cand_psi[parent, col], -math.inf)
        return r_n, r_b, psi, last

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        frames, rows, _ = self.x.shape
        empty = self.prev is None
        r_n, r_b, psi_g, last = self._state(input_ids)
        att = scores.float().log_softmax(-1)
        ranked = att.clone()
        ranked[:, self.never] = -math.inf
        ranked[:, self.eos] = -math.inf  # scored apart, from the prefix alone
        tokens = ranked.topk(self.candidates, -1).indices  # (rows, k)
        k = tokens.shape[1]
        x = torch.gather(self.x, 2, tokens[None].expand(frames, rows, k))  # (frames, rows, k)
        # phi: the probability of g through frame t, ready to be followed by c at t + 1 (a
        # repeated letter needs a blank between, so only b counts for c == last(g)).
        same = (tokens == last[:, None])[None]
        phi = torch.logaddexp(r_b[:, :, None], torch.where(same, -math.inf, r_n[:, :, None]))
        # The forward variables of each candidate h = g c at every frame t,
        #   n[t] = logaddexp(n[t-1], phi[t-1]) + x[t](c),
        #   b[t] = logaddexp(b[t-1], n[t-1]) + x[t](blank),
        # unrolled into cumulative sums, so that a step costs a few tensor operations rather
        # than a Python loop over the frames: with X the cumulative sum of x(c),
        # n[t] = X[t] + logcumsumexp(phi[s-1] - X[s-1], s <= t), and b alike.
        big_x = torch.cumsum(x, 0)
        first = torch.full((1, rows, k), 0.0 if empty else -math.inf, device=x.device)
        cand_n = big_x + torch.logcumsumexp(torch.cat([first, phi[:-1] - big_x[:-1]]), 0)
        big_b = self.blanks[:, :, None]
        none = torch.full((1, rows, k), -math.inf, device=x.device)
        cand_b = big_b + torch.logcumsumexp(torch.cat([none, cand_n[:-1] - big_b[:-1]]), 0)
        cand_psi = torch.logsumexp(torch.cat([cand_n[:1], phi[:-1] + x[1:]]), 0)  # (rows, k)
        self.prev = (tokens, cand_n, cand_b, cand_psi)
        if self.num_beams > 1:
            self.prev_ids = [tuple(ids) for ids in input_ids.tolist()]
        psi = torch.full_like(att, -math.inf)
        psi.scatter_(1, tokens, cand_psi)
        psi[:, self.eos] = torch.logaddexp(r_n[-1], r_b[-1])
        psi[:, self.never] = -math.inf  # in the top k only when fewer tokens are left
        joint = (1 - self.weight) * att + self.weight * (psi - psi_g[:, None])
        # A prefix CTC cannot produce at all (longer than the frames allow) keeps the
        # decoder's own scores rather than ruling every continuation out.
        possible = torch.isfinite(psi_g)[:, None]
        return torch.where(possible, joint, att).to(scores.dtype)
