"""Build a TrOCR-architecture line model from scratch: character tokenizer, processor, model.

The result is an ordinary ``VisionEncoderDecoderModel`` (ViT encoder + ``TrOCRForCausalLM``
decoder) saved with its ``TrOCRProcessor``, so everything that loads a Hugging Face TrOCR
checkpoint loads it too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    TrOCRConfig,
    TrOCRProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
)

from worker.recognition.ctc_prefix import CTC_HEAD_FILE
from worker.recognition.line_encoder import LineEncoderConfig

#: Special tokens in TrOCR's order: start, pad, end, unknown.
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

#: Printable ASCII, the Latin-1 letters and signs a European archive holds, and typographic
#: punctuation (curly quotes, dashes, ellipsis) that handwriting transcriptions use.
CHARSET = (
    "".join(chr(c) for c in range(32, 127))
    + "".join(chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7))
    + "£€¢¥°§¶©®±×÷½¼¾«»¡¿ªº·"
    + "‘’‚“”„–—…•†‰′″"
)


def build_tokenizer(charset: str = CHARSET) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per character, no spaces added on decode."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in dict.fromkeys(charset):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )


@dataclass(frozen=True)
class ModelShape:
    """Size of a line model; the defaults are the shipped model's."""

    height: int = 32
    width: int = 384
    patch: tuple[int, int] = (32, 4)
    hidden: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 4
    ffn: int = 1024
    max_positions: int = 160
    #: "vit" (patches projected straight into the transformer) or "conv" (a convolutional
    #: stem first: ``worker.recognition.line_encoder``); for "conv", ``patch`` is ignored and
    #: the stem's pools set the reduction.
    encoder: str = "vit"
    stem_channels: tuple[int, ...] = (16, 32, 64, 128)
    stem_pools: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (2, 2), (1, 1))
    stem_patch: tuple[int, int] = (2, 2)


#: The designs compared in the model card's design study, by name (``htrq train --design``).
DESIGNS: dict[str, ModelShape] = {
    # The shape shipped through stage 8: ViT, 32 x 4 patches of a 32-pixel line.
    "vit32": ModelShape(),
    # The same ViT on a line twice as tall (patches 64 x 8: the same 96 columns).
    "vit64": ModelShape(height=64, width=768, patch=(64, 8)),
    # A convolutional stem on a 64-pixel line: 2 x 2 patches, three 3 x 3 convolutions, two
    # 2 x 2 pools (96 columns of 8 rows, projected to the transformer's width). Wider stems
    # with a 3 x 3 convolution at full resolution read 2-8x slower on the CPU (model card).
    "conv64": ModelShape(
        height=64,
        width=768,
        encoder="conv",
        stem_patch=(2, 2),
        stem_channels=(16, 32, 64, 128),
        stem_pools=((1, 1), (2, 2), (2, 2), (1, 1)),
    ),
}


def build_model(
    shape: ModelShape = ModelShape(),
) -> tuple[VisionEncoderDecoderModel, TrOCRProcessor]:
    """A randomly initialised model and its processor, ready to train or save."""
    tokenizer = build_tokenizer()
    common = dict(
        image_size=[shape.height, shape.width],
        num_channels=1,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.encoder_layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.ffn,
        qkv_bias=True,
    )
    encoder: ViTConfig
    if shape.encoder == "conv":
        encoder = LineEncoderConfig(
            stem_channels=list(shape.stem_channels),
            stem_pools=[list(p) for p in shape.stem_pools],
            stem_patch=list(shape.stem_patch),
            **common,
        )
    elif shape.encoder == "vit":
        encoder = ViTConfig(patch_size=list(shape.patch), **common)
    else:
        raise ValueError(f"encoder must be vit or conv, not {shape.encoder!r}")
    decoder = TrOCRConfig(
        vocab_size=len(tokenizer),
        d_model=shape.hidden,
        decoder_layers=shape.decoder_layers,
        decoder_attention_heads=shape.heads,
        decoder_ffn_dim=shape.ffn,
        max_position_embeddings=shape.max_positions,
        activation_function="gelu",
        layernorm_embedding=True,
        use_learned_position_embeddings=True,
        scale_embedding=False,
        cross_attention_hidden_size=shape.hidden,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = VisionEncoderDecoderModel(config=config)
    set_special_tokens(model, tokenizer)
    model.config.htrq_shape = asdict(shape)
    image_processor = ViTImageProcessor(
        size={"height": shape.height, "width": shape.width},
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5],
        image_std=[0.5],
        do_convert_rgb=False,
    )
    return model, TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer)


def set_special_tokens(model: VisionEncoderDecoderModel, tokenizer, *, keep: bool = False) -> None:
    """Copy token ids to the places transformers 5 reads them from.

    The top-level config carries no token ids in transformers 5; training with ``labels``
    needs ``pad_token_id`` and ``decoder_start_token_id`` on it, and ``generate`` reads the
    generation config. ``keep`` leaves ids a loaded model already has as they are.
    """
    ids = {
        "decoder_start_token_id": tokenizer.bos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if keep:
        for name in ids:
            found = getattr(model.config, name, None)
            if found is None:
                found = getattr(model.generation_config, name, None)
            if found is None:
                found = getattr(model.config.decoder, name, None)
            if found is not None:
                ids[name] = found
    for cfg in (model.config, model.generation_config):
        for name, value in ids.items():
            setattr(cfg, name, value)
    if not keep or model.generation_config.max_new_tokens is None:
        model.generation_config.max_new_tokens = 96


def save(model: VisionEncoderDecoderModel, processor: TrOCRProcessor, out_dir: Path) -> Path:
    """Write a standard checkpoint; a training-only CTC head goes to its own file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = model._modules.pop("ctc_head", None)
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if head is not None:
            model.ctc_head = head
    if head is not None:
        weights = {k: v.contiguous() for k, v in head.state_dict().items()}
        save_file(weights, out_dir / CTC_HEAD_FILE)
    processor.save_pretrained(out_dir)
    return out_dir


#: A tiny random model of the same architecture, for tests of the service's mechanics (its
#: variants: ``dataclasses.replace(TINY, ...)``).
TINY = ModelShape(
    height=16,
    width=128,
    patch=(16, 16),
    hidden=32,
    encoder_layers=1,
    decoder_layers=1,
    heads=2,
    ffn=64,
    max_positions=64,
)


def build_tiny_model(out_dir: Path) -> Path:
    """A :data:`TINY` model, saved in ``out_dir``."""
    model, processor = build_model(TINY)
    return save(model, processor, out_dir)
