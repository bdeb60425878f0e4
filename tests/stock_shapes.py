"""Tiny random models shaped like Microsoft's stock TrOCR checkpoints, built offline.

The hub is out of reach in tests, but what breaks a stock checkpoint in htrq is its shape,
not its weights: a square 384x384 RGB input stretched from any line, a byte-level BPE or
sentencepiece tokenizer whose tokens hold several characters, ``</s>`` as the decoder's
start token, no CTC head. These builders keep every one of those (the classes, processors,
image size, channels, normalisation, tokenizer types and special-token ids of
``microsoft/trocr-base-handwritten`` and ``microsoft/trocr-small-handwritten``) and shrink
only the widths and depths, so a model builds in a second and reads a line in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import SentencePieceUnigramTokenizer
from tokenizers.implementations import ByteLevelBPETokenizer
from transformers import (
    DeiTConfig,
    DeiTImageProcessor,
    RobertaTokenizerFast,
    TrOCRConfig,
    TrOCRProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
    XLMRobertaTokenizerFast,
)

#: Text the tokenizers learn their merges and pieces from (what lines of letters hold).
CORPUS = [
    "Dear Mrs. Stanford, I write to thank you for your kind letter of the 12th.",
    "The meeting of the board will be held on Monday, 3 March 1905, at ten o'clock.",
    "Received with thanks the sum of forty-two dollars and fifty cents ($42.50).",
    "Yours very truly, John Smith. 14 Elm Street, Palo Alto, California",
    "Nous avons reçu votre lettre du 5 juin et vous en remercions bien sincèrement.",
    "the quick brown fox jumps over the lazy dog 0123456789 !?;:-()'\"",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
#: The stock checkpoints' ids: <s>=0, <pad>=1, </s>=2 (the decoder's start and end), <unk>=3.
BOS, PAD, EOS = 0, 1, 2
IMAGE = 384
#: Both stock processors stretch any crop to 384 x 384 RGB, mean and std 0.5.
IMAGE_PROCESSING = {
    "size": {"height": IMAGE, "width": IMAGE},
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
#: The stock encoders' input (384 x 384 RGB, patches of 16), at a tiny width and depth.
ENCODER = {
    "image_size": IMAGE,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def _decoder(vocab: int, *, learned_positions: bool) -> TrOCRConfig:
    return TrOCRConfig(
        vocab_size=vocab,
        d_model=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_position_embeddings=512,
        activation_function="gelu",
        layernorm_embedding=True,
        use_learned_position_embeddings=learned_positions,
        scale_embedding=not learned_positions,
        cross_attention_hidden_size=32,
        bos_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
    )


def _finish(encoder, decoder: TrOCRConfig, processor: TrOCRProcessor, out: Path) -> Path:
    torch.manual_seed(0)  # the same weights whatever ran before
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = VisionEncoderDecoderModel(config=config)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.bos_token_id = EOS, BOS
        cfg.pad_token_id, cfg.eos_token_id = PAD, EOS
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_trocr_base_like(out: Path) -> Path:
    """``trocr-base/large-handwritten``'s shape: ViT encoder, RoBERTa byte-level BPE,
    learned positions."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIALS)
    learned = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = RobertaTokenizerFast(vocab=learned["vocab"], merges=merges)
    image = ViTImageProcessor(resample=2, **IMAGE_PROCESSING)
    encoder = ViTConfig(qkv_bias=False, **ENCODER)
    processor = TrOCRProcessor(image_processor=image, tokenizer=tokenizer)
    return _finish(encoder, _decoder(len(tokenizer), learned_positions=True), processor, out)


def build_trocr_small_like(out: Path) -> Path:
    """``trocr-small-handwritten``'s shape: DeiT encoder, XLM-RoBERTa sentencepiece unigram,
    sinusoidal positions."""
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(CORPUS, vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>")
    pieces = [(piece, score) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizerFast(vocab=[*pieces, ("<mask>", 0.0)])
    image = DeiTImageProcessor(do_center_crop=False, resample=3, **IMAGE_PROCESSING)
    encoder = DeiTConfig(qkv_bias=True, **ENCODER)
    processor = TrOCRProcessor(image_processor=image, tokenizer=tokenizer)
    return _finish(encoder, _decoder(len(tokenizer), learned_positions=False), processor, out)
