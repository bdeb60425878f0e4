"""Checkpoint averaging: the mean of the weights of several checkpoints of one training run.

The last checkpoints of a run sit at different points around the same minimum; their mean
usually reads better than any one of them (Vaswani et al. 2017, "Attention is all you need",
section 6.1; Izmailov et al. 2018, stochastic weight averaging). It costs no training.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from worker.training.build import CTC_HEAD_FILE

WEIGHTS_FILE = "model.safetensors"
#: Key prefix of the CTC head inside a Trainer checkpoint (it is one module of the model there).
CTC_PREFIX = "ctc_head."
#: Files of a checkpoint that make up the model (the rest is the Trainer's resume state).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder, with its CTC head (if any) under ``ctc_head.``.

    A Trainer checkpoint keeps the head inside ``model.safetensors``; an exported model keeps
    it in its own file.
    """
    weights = load_file(ckpt / WEIGHTS_FILE)
    if (ckpt / CTC_HEAD_FILE).exists():
        weights |= {CTC_PREFIX + k: v for k, v in load_file(ckpt / CTC_HEAD_FILE).items()}
    return weights


def average_checkpoints(ckpts: list[Path], out_dir: Path) -> Path:
    """Write the mean of ``ckpts`` (same architecture) to ``out_dir`` as an exported model.

    Sums in float64 so that ten fp32 checkpoints average without rounding drift; integer
    buffers must agree across checkpoints and are copied.
    """
    if not ckpts:
        raise ValueError("no checkpoints to average")
    ckpts = [Path(c) for c in ckpts]
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for ckpt in ckpts:
        weights = _weights(ckpt)
        if total and weights.keys() != total.keys():
            diff = sorted(weights.keys() ^ total.keys())[:5]
            raise ValueError(f"{ckpt} has different weights from {ckpts[0]} ({diff} ...)")
        for name, w in weights.items():
            if name not in total:
                total[name] = w.double() if w.is_floating_point() else w.clone()
                dtypes[name] = w.dtype
            elif w.is_floating_point():
                if w.shape != total[name].shape:
                    raise ValueError(f"{ckpt}: {name} has shape {tuple(w.shape)}")
                total[name] += w.double()
            elif not torch.equal(w, total[name]):
                raise ValueError(f"{ckpt}: integer buffer {name} differs")
    mean = {
        k: (v / len(ckpts)).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (ckpts[0] / name).exists():
            shutil.copy2(ckpts[0] / name, out_dir / name)
    head = {k[len(CTC_PREFIX) :]: v for k, v in mean.items() if k.startswith(CTC_PREFIX)}
    model = {k: v.contiguous() for k, v in mean.items() if not k.startswith(CTC_PREFIX)}
    with safe_open(str(ckpts[0] / WEIGHTS_FILE), "pt") as fh:
        metadata = fh.metadata() or {"format": "pt"}
    save_file(model, out_dir / WEIGHTS_FILE, metadata=metadata)
    if head:
        save_file({k: v.contiguous() for k, v in head.items()}, out_dir / CTC_HEAD_FILE)
    return out_dir
