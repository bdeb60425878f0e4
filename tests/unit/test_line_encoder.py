"""The conv-stem line encoder: a VisionEncoderDecoder checkpoint like any other."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageDraw

from worker.recognition.ctc_prefix import load_ctc_head
from worker.recognition.line_encoder import LineEncoderConfig, LineEncoderModel, column_states
from worker.recognition.loading import load_model
from worker.recognition.recognizer import Recognizer
from worker.training.build import TINY, build_model, save
from worker.training.train import attach_ctc_head, ctc_loss, one_patch_row

TINY_CONV = replace(
    TINY,
    encoder="conv",
    stem_patch=(2, 2),
    stem_channels=(4, 8),
    stem_pools=((1, 1), (2, 2)),
)


def _line(text: str = "abc") -> Image.Image:
    im = Image.new("L", (120, 30), 255)
    ImageDraw.Draw(im).text((4, 8), text, fill=0)
    return im


def test_the_stem_gives_one_state_per_column_and_ctc_reads_them_all():
    """16 x 128 through 2 x 2 patches and a 2 x 2 pool: 32 columns, no [CLS] to drop."""
    model, _ = build_model(TINY_CONV)
    hidden = model.encoder(pixel_values=torch.zeros(2, 1, 16, 128)).last_hidden_state
    assert hidden.shape == (2, 32, 32)
    assert column_states(model, hidden).shape == (2, 32, 32)
    assert one_patch_row(model)
    assert model.config.encoder.patch_size == [4, 4]


def test_a_vit_drops_its_cls_token_and_a_square_grid_is_not_a_row():
    """ViT's outputs start with [CLS]; a stock-shaped square grid has no column order."""
    model, _ = build_model(replace(TINY, patch=(16, 8)))
    hidden = model.encoder(pixel_values=torch.zeros(1, 1, 16, 128)).last_hidden_state
    assert hidden.shape[1] == 17 and column_states(model, hidden).shape[1] == 16
    square, _ = build_model(replace(TINY, height=32, width=32))
    assert not one_patch_row(square)


def test_a_conv_model_saves_loads_and_reads_the_same(tmp_path):
    """Weights, batch-norm statistics and the CTC head survive save and load, and the loaded
    recognizer reads a line exactly as the model in memory does."""
    model, processor = build_model(TINY_CONV)
    attach_ctc_head(model, "scratch", len(processor.tokenizer))
    # Non-default running statistics, so that a load that forgot them would read otherwise.
    model.train()
    model.encoder(pixel_values=torch.randn(4, 1, 16, 128) * 3 + 1)
    model.eval()
    save(model, processor, tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert isinstance(loaded.encoder, LineEncoderModel)
    assert isinstance(loaded.config.encoder, LineEncoderConfig)
    for (name, a), (_, b) in zip(
        model.encoder.state_dict().items(), loaded.encoder.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert load_ctc_head(tmp_path / "m") is not None
    kept = Recognizer(
        model, processor, name="mem", num_beams=1, ctc_head=model.ctc_head, ctc_weight=0.4
    )
    rec = Recognizer.load(model=str(tmp_path / "m"), num_beams=1, max_new_tokens=12, ctc_weight=0.4)
    crops = [_line("abc"), _line("xyz")]
    kept.max_new_tokens = 12
    assert [r.text for r in rec(crops)] == [r.text for r in kept(crops)]


def test_a_few_steps_of_hybrid_training_lower_the_loss():
    """The stem learns: cross-entropy plus CTC on its columns falls on a fixed batch."""
    torch.manual_seed(0)
    model, processor = build_model(TINY_CONV)
    attach_ctc_head(model, "scratch", len(processor.tokenizer))
    pixels = torch.randn(4, 1, 16, 128)
    labels = torch.tensor(
        [[10, 11, 12, 2], [13, 14, 2, -100], [15, 2, -100, -100], [16, 17, 18, 2]]
    )
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    losses = []
    for _ in range(30):
        out = model(pixel_values=pixels, labels=labels)
        loss = 0.6 * out.loss + 0.4 * ctc_loss(model, out.encoder_last_hidden_state, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_stem_settings_must_pair_up():
    """A pool for every convolution, or the config is refused."""
    with pytest.raises(ValueError, match="one entry per convolution"):
        LineEncoderConfig(stem_channels=[8, 16], stem_pools=[[2, 2]])
