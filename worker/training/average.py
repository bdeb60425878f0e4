"""Checkpoint averaging: the mean of the weights of several checkpoints of one training run.

Checkpoints of a run that lie apart around the same minimum often read better as their mean
than any one of them (Vaswani et al. 2017, "Attention is all you need", section 6.1; Izmailov
et al. 2018, stochastic weight averaging); checkpoints of an annealed tail barely differ, and
their mean gains nothing. It costs no training, but evaluate it: the model card has both cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor
from transformers.utils import CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_NAME

from worker.recognition.ctc_prefix import CTC_HEAD_FILE

#: Key prefix of the CTC head inside a Trainer checkpoint (it is one module of the model there).
CTC_PREFIX = "ctc_head."


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder, with its CTC head (if any) under ``ctc_head.``.

    A Trainer checkpoint keeps the head inside ``model.safetensors``; an exported model keeps
    it in its own file.
    """
    weights = load_file(ckpt / SAFE_WEIGHTS_NAME)
    if (ckpt / CTC_HEAD_FILE).exists():
        weights |= {CTC_PREFIX + k: v for k, v in load_file(ckpt / CTC_HEAD_FILE).items()}
    return weights


def average_checkpoints(ckpts: list[Path], out_dir: Path) -> Path:
    """Write the mean of ``ckpts`` (same architecture) to ``out_dir`` as an exported model.

    Works on the files' tensors, not on loaded models: transformers renames some weights on
    loading, and the files of every checkpoint of a run name them alike. Sums in float64 so
    that many fp32 checkpoints average without rounding drift.
    """
    if not ckpts:
        raise ValueError("no checkpoints to average")
    ckpts = [Path(c) for c in ckpts]
    first = _weights(ckpts[0])
    total = {k: v.double() for k, v in first.items()}
    for ckpt in ckpts[1:]:
        weights = _weights(ckpt)
        if weights.keys() != total.keys():
            diff = sorted(weights.keys() ^ total.keys())[:5]
            raise ValueError(f"{ckpt} has different weights from {ckpts[0]} ({diff} ...)")
        for name, w in weights.items():
            if w.shape != total[name].shape:
                raise ValueError(f"{ckpt}: {name} has shape {tuple(w.shape)}")
            total[name] += w.double()
    mean = {k: (v / len(ckpts)).to(first[k].dtype).contiguous() for k, v in total.items()}

    # The first checkpoint's configs as they are (a round trip through AutoConfig drops
    # settings such as use_cache) and its processor, written by the class that knows its
    # files; a Trainer checkpoint's resume state is left behind.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, GENERATION_CONFIG_NAME):
        if (ckpts[0] / name).exists() and ckpts[0].resolve() != out_dir.resolve():
            shutil.copy2(ckpts[0] / name, out_dir / name)
    AutoProcessor.from_pretrained(ckpts[0]).save_pretrained(out_dir)
    head = {k[len(CTC_PREFIX) :]: v for k, v in mean.items() if k.startswith(CTC_PREFIX)}
    model = {k: v for k, v in mean.items() if not k.startswith(CTC_PREFIX)}
    save_file(model, out_dir / SAFE_WEIGHTS_NAME, metadata={"format": "pt"})
    if head:
        save_file(head, out_dir / CTC_HEAD_FILE)
    return out_dir
