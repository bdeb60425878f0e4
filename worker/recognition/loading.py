"""Load a VisionEncoderDecoder checkpoint the same way everywhere (recognizer, training).

``from_pretrained`` in transformers 5 builds the model on the ``meta`` device and then fills
in the saved weights. TrOCR's sinusoidal position table (``trocr-small-*``, decoders with
``use_learned_position_embeddings: false``) is neither a weight nor a buffer, so it stays on
``meta`` and the first decoding step fails with "Cannot copy out of meta tensor" (found with
a model of ``trocr-small-handwritten``'s shape, transformers 5.24). The table is a pure
function of its size, so it is simply computed again.
"""

from __future__ import annotations

import torch
from transformers import VisionEncoderDecoderModel
from transformers.models.trocr.modeling_trocr import TrOCRSinusoidalPositionalEmbedding

# Registers htrq's conv-stem line encoder with the Auto classes, so that checkpoints built
# on it load here like any other.
import worker.recognition.line_encoder  # noqa: F401


def load_model(path: str, dtype: torch.dtype = torch.float32) -> VisionEncoderDecoderModel:
    """``VisionEncoderDecoderModel.from_pretrained`` with every part on a real device."""
    model = VisionEncoderDecoderModel.from_pretrained(path, dtype=dtype)
    for module in model.modules():
        if isinstance(module, TrOCRSinusoidalPositionalEmbedding) and module.weights.is_meta:
            module.weights = module.get_embedding(
                module.weights.shape[0], module.embedding_dim, module.padding_idx
            ).to(dtype)
    return model
