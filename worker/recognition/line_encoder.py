"""A line encoder with a convolutional front end: a conv stem feeding ViT's transformer layers.

Why: the built-in model's first encoder (ViT, 32 x 4 patches of a 32-pixel line, trained from
scratch) could not even fit its training lines (CER 0.15-0.21 on lines it had trained on). A
transformer without a convolutional bias needs far more data than ~20k real lines, and at 32
pixels the strokes that tell *n* from *u* are a pixel or two. The recognisers that learn a
hand from a few thousand lines on modest hardware (PyLaia, kraken, Diaz et al. 2021,
"Rethinking Text Line Recognition Models") read 64-128 pixel lines through a few 3 x 3
convolutions first. This encoder does the same and keeps everything else: the stem turns a
``height x width`` line into one feature vector per column (``width / 8`` columns: the same
96 as the ViT encoder at 32 x 384), and ViT's own layers (``ViTLayer``) mix them. There is no
[CLS] token: every output is a column of the line, left to right, so the CTC head reads all
of them.

It is a ``PreTrainedModel`` with a config of its own (``model_type`` ``htrq-line-encoder``),
registered with the ``Auto`` classes when this module is imported, so a
``VisionEncoderDecoderModel`` with this encoder saves, loads
(``worker.recognition.loading.load_model`` imports this module first) and ``generate()``s
like any checkpoint.
"""

from __future__ import annotations

from dataclasses import field

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, ViTConfig
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.vit.modeling_vit import ViTLayer

MODEL_TYPE = "htrq-line-encoder"


@strict
class LineEncoderConfig(ViTConfig):
    """ViT's settings for the transformer layers, plus the stem's.

    ``patch_size`` is the stem's total reduction (height, width): the stem's pools multiplied
    together; it is kept so that code which asks a ViT for its patch grid gets the truth.
    """

    model_type = MODEL_TYPE

    #: Output channels of each 3 x 3 convolution of the stem.
    stem_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    #: Max-pool (height, width) after each convolution; [1, 1] for none.
    stem_pools: list[list[int]] = field(default_factory=lambda: [[2, 2], [2, 2], [2, 2], [1, 1]])
    #: The first convolution's kernel and stride (height, width): [1, 1] makes it a 3 x 3
    #: convolution at full resolution like the others; [s, s] cuts the image into s x s
    #: patches first (ConvNeXt's stem), which costs a fraction: the full-resolution feature
    #: maps are the most expensive part of a stem on a CPU.
    stem_patch: list[int] = field(default_factory=lambda: [1, 1])

    def __post_init__(self, **kwargs):
        if len(self.stem_channels) != len(self.stem_pools):
            raise ValueError("stem_channels and stem_pools need one entry per convolution")
        ph, pw = self.stem_patch
        for h, w in self.stem_pools:
            ph, pw = ph * h, pw * w
        self.patch_size = [ph, pw]
        super().__post_init__(**kwargs)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class ConvStem(nn.Module):
    """3 x 3 convolutions with batch norm, GELU and max-pooling, then each column's features
    (channels x remaining rows) projected to the transformer's width, with learned positions."""

    def __init__(self, config: LineEncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.num_channels
        first = tuple(config.stem_patch)
        for i, (out, (ph, pw)) in enumerate(
            zip(config.stem_channels, config.stem_pools, strict=True)
        ):
            conv = (
                nn.Conv2d(channels, out, first, stride=first, bias=False)
                if i == 0 and first != (1, 1)
                else nn.Conv2d(channels, out, 3, padding=1, bias=False)
            )
            layers += [
                conv,
                nn.BatchNorm2d(out),
                nn.GELU(),
            ]
            if (ph, pw) != (1, 1):
                layers.append(nn.MaxPool2d((ph, pw)))
            channels = out
        self.convs = nn.Sequential(*layers)
        height, width = _pair(config.image_size)
        rows, self.columns = height // config.patch_size[0], width // config.patch_size[1]
        self.projection = nn.Linear(channels * rows, config.hidden_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.columns, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        maps = self.convs(pixel_values)  # (batch, channels, rows, columns)
        b, c, r, w = maps.shape
        if w != self.columns:
            raise ValueError(f"expected {self.columns} columns after the stem, got {w}")
        columns = maps.permute(0, 3, 1, 2).reshape(b, w, c * r)
        return self.dropout(self.projection(columns) + self.position_embeddings)


class LineEncoderModel(PreTrainedModel):
    """Conv stem + ViT layers + final layer norm; ``last_hidden_state`` is one vector per
    column of the line (no [CLS])."""

    config_class = LineEncoderConfig
    config: LineEncoderConfig
    base_model_prefix = "line_encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True

    def __init__(self, config: LineEncoderConfig) -> None:
        super().__init__(config)
        self.stem = ConvStem(config)
        self.layers = nn.ModuleList([ViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ConvStem):
            nn.init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def get_input_embeddings(self) -> nn.Module:
        return self.stem

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        if pixel_values is None:
            raise ValueError("pixel_values are required")
        weight = self.stem.projection.weight
        hidden = self.stem(pixel_values.to(weight.dtype))
        states = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, None)
            if isinstance(hidden, tuple):  # older ViTLayer returns a tuple
                hidden = hidden[0]
            if states is not None:
                states.append(hidden)
        hidden = self.layernorm(hidden)
        return BaseModelOutput(
            last_hidden_state=hidden, hidden_states=tuple(states) if states else None
        )


def column_states(model, hidden: torch.Tensor) -> torch.Tensor:
    """The encoder outputs that stand for the line's columns, left to right: all of them for
    this encoder, all but ViT's leading [CLS] token for a ViT whose patches form one row."""
    if model.config.encoder.model_type == MODEL_TYPE:
        return hidden
    return hidden[:, 1:]


def reads_columns(model) -> bool:
    """Whether the encoder's outputs are the line's columns left to right, which CTC can
    align with the text: always for this encoder; for a ViT only when its patches form one
    row (a square grid, stock TrOCR, is read row by row across the image)."""
    enc = model.config.encoder
    if enc.model_type == MODEL_TYPE:
        return True
    return _pair(enc.image_size)[0] == _pair(enc.patch_size)[0]


AutoConfig.register(MODEL_TYPE, LineEncoderConfig)
AutoModel.register(LineEncoderConfig, LineEncoderModel)
