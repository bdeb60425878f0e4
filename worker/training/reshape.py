"""A line model's input made larger without losing what it learned.

The built-in model reads 32-pixel-high lines: cursive with long ascenders and descenders
keeps x-heights of about 10 pixels there. Scaling its input by ``factor`` in both directions
(32x384 -> 64x768) and its patches by the same factor keeps the patch grid, so the encoder's
position embeddings and every layer above the patch projection stay as they are. The new
projection is the old one spread over each ``factor x factor`` block and divided by its
area: on any image it computes exactly what the old model computed on the image's
block-averaged half-size copy. The model starts where it was, and fine-tuning can then use
the detail the larger input holds, for the cost of a wider patch projection (a few per cent
of the encoder).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoProcessor

from worker.recognition.ctc_prefix import CTC_HEAD_FILE
from worker.recognition.loading import load_model
from worker.training.build import save, set_special_tokens


def enlarge_input(model_dir: Path, out_dir: Path, factor: int = 2) -> Path:
    """Write ``model_dir`` with its input and patches ``factor`` times larger to ``out_dir``."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, not {factor}")
    model = load_model(str(model_dir))
    processor = AutoProcessor.from_pretrained(model_dir)
    enc = model.config.encoder
    if enc.model_type != "vit":
        raise ValueError(f"only ViT encoders can be enlarged, not {enc.model_type!r}")
    old = model.encoder.embeddings.patch_embeddings.projection
    ph, pw = _pair(enc.patch_size)
    h, w = _pair(enc.image_size)
    enc.patch_size = [ph * factor, pw * factor]
    enc.image_size = [h * factor, w * factor]
    new = torch.nn.Conv2d(
        old.in_channels,
        old.out_channels,
        kernel_size=(ph * factor, pw * factor),
        stride=(ph * factor, pw * factor),
    )
    with torch.no_grad():
        kernel = old.weight.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        new.weight.copy_(kernel / factor**2)
        new.bias.copy_(old.bias)
    patches = model.encoder.embeddings.patch_embeddings
    patches.projection = new
    patches.image_size = tuple(enc.image_size)
    patches.patch_size = tuple(enc.patch_size)
    shape = getattr(model.config, "htrq_shape", None)
    if shape:
        model.config.htrq_shape = {
            **shape,
            "height": h * factor,
            "width": w * factor,
            "patch": [ph * factor, pw * factor],
        }
    processor.image_processor.size = {"height": h * factor, "width": w * factor}
    set_special_tokens(model, processor.tokenizer)
    save(model, processor, out_dir)
    # The CTC head reads the encoder's outputs, which keep their number and meaning.
    if (Path(model_dir) / CTC_HEAD_FILE).exists():
        shutil.copy(Path(model_dir) / CTC_HEAD_FILE, Path(out_dir) / CTC_HEAD_FILE)
    return Path(out_dir)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def graft_conv_stem(model_dir: Path, out_dir: Path, design: str = "conv64") -> Path:
    """Write ``model_dir`` with a convolutional stem in place of its ViT patch projection.

    The new model takes ``design``'s input (a taller line) and starts with everything the old
    one learned above the patches: the transformer layers, the final layer norm, the decoder
    (its language of characters and its cross-attention), the CTC head and the tokenizer.
    The stem's column positions start as the ViT's patch positions (the same 96 columns of a
    line); only the convolutions start from scratch, and ``htrq train --stem-only-steps``
    lets them learn to feed the trained layers before anything else moves.
    """
    from worker.training.build import DESIGNS, build_model

    old = load_model(str(model_dir))
    processor = AutoProcessor.from_pretrained(model_dir)
    if old.config.encoder.model_type != "vit":
        raise ValueError(
            f"only a ViT encoder's stem can be replaced, not {old.config.encoder.model_type!r}"
        )
    shape = DESIGNS[design]
    if shape.encoder != "conv":
        raise ValueError(f"{design} has no convolutional stem")
    enc = old.config.encoder
    shape = replace(
        shape,
        hidden=enc.hidden_size,
        encoder_layers=enc.num_hidden_layers,
        heads=enc.num_attention_heads,
        ffn=enc.intermediate_size,
    )
    new, fresh = build_model(shape)
    if len(fresh.tokenizer) != len(processor.tokenizer):
        raise ValueError("the model's tokenizer is not the built-in character tokenizer")
    new.decoder.load_state_dict(old.decoder.state_dict())
    kept = {
        k: v for k, v in old.encoder.state_dict().items() if k.startswith(("layers.", "layernorm."))
    }
    missing, unexpected = new.encoder.load_state_dict(kept, strict=False)
    if unexpected or any(k.startswith(("layers.", "layernorm.")) for k in missing):
        raise ValueError(f"the encoder layers do not match: {unexpected or missing}")
    positions = old.encoder.embeddings.position_embeddings[:, 1:]  # the patches, not [CLS]
    stem = new.encoder.stem
    if positions.shape == stem.position_embeddings.shape:
        with torch.no_grad():
            stem.position_embeddings.copy_(positions)
    processor.image_processor.size = {"height": shape.height, "width": shape.width}
    new.generation_config = old.generation_config
    set_special_tokens(new, processor.tokenizer, keep=True)
    save(new, processor, out_dir)
    if (Path(model_dir) / CTC_HEAD_FILE).exists():
        shutil.copy(Path(model_dir) / CTC_HEAD_FILE, Path(out_dir) / CTC_HEAD_FILE)
    return Path(out_dir)
