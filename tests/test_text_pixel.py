"""The stride-8 text-pixel head (`surgray.model.referring.text_pixel`) and its place in stage 1."""

from __future__ import annotations

import math

import pytest
import torch
from _referring_fixtures import script_scores, tiny_model, write_tiny_clip
from torch.nn import functional as F

from surgray.model.checkpoints.referring_checkpoint import (
    build_resurgsam2,
    load_referring_checkpoint,
    save_referring_checkpoint,
)
from surgray.model.checkpoints.sam2_checkpoint import CheckpointMismatchError
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.referring.text_pixel import TextPixelConfig, TextPixelHead

SIZE = 64


def _identity_head(scale: float) -> TextPixelHead:
    """E = 2 with every linear map the identity: bias = scale * <t, gelu(p)> / sqrt(2)."""
    head = TextPixelHead(TextPixelConfig(embed_dim=2), text_dim=2, pixel_dim=2)
    with torch.no_grad():
        for layer in (head.text, head.pixel[0], head.pixel[2]):
            layer.weight.copy_(torch.eye(2).reshape(layer.weight.shape))
            layer.bias.zero_()
        head.scale.fill_(scale)
    return head


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_head_scores_each_pixel_against_its_text():
    head = _identity_head(scale=3.0)
    text = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
    # One 1 x 2 pixel map shared by both texts: pixels (2, 0) and (-1, 1).
    pixels = torch.tensor([[[[2.0, -1.0]], [[0.0, 1.0]]]])
    bias = head(text, pixels, size=(1, 2))
    expected = torch.tensor(
        [
            [_gelu(2.0), _gelu(-1.0)],
            [0.5 * _gelu(2.0), 0.5 * _gelu(-1.0) - 2.0 * _gelu(1.0)],
        ]
    )
    torch.testing.assert_close(bias[:, 0, 0], 3.0 * expected / math.sqrt(2.0))
    assert bias.shape == (2, 1, 1, 2)
    # A map per text gives the same as the shared one; other sizes are bilinear resizes.
    torch.testing.assert_close(head(text, pixels.expand(2, -1, -1, -1), (1, 2)), bias)
    resized = F.interpolate(bias, size=(2, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(text, pixels, size=(2, 4)), resized)


def test_head_starts_silent_and_rejects_a_mismatched_batch():
    head = TextPixelHead(TextPixelConfig(embed_dim=4), text_dim=3, pixel_dim=5)
    text, pixels = torch.randn(2, 3), torch.randn(1, 5, 4, 4)
    assert torch.count_nonzero(head(text, pixels, (8, 8))) == 0  # scale starts at 0
    with pytest.raises(ValueError, match="pixel map of batch 3 for 2 text tokens"):
        head(text, torch.randn(3, 5, 4, 4), (8, 8))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def _pair(clip_dir) -> tuple[ReSurgSAM2, ReSurgSAM2]:
    """The same random network without and with the head; objects scripted present."""
    plain = tiny_model(clip_dir, size=SIZE, stage1_multimask=False)
    with_head = ReSurgSAM2(
        plain.cfg, plain.referring_cfg.model_copy(update={"text_pixel": TextPixelConfig()})
    )
    missing, unexpected = with_head.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("text_pixel.") for k in missing)
    with_head.text_encoder = plain.text_encoder
    for model in (plain, with_head):
        script_scores(model, object_score=4.0, iou=0.9)
    return plain, with_head.eval()


def test_stage1_adds_the_head_to_the_decoder_masks(clip_dir):
    plain, with_head = _pair(clip_dir)
    assert with_head.text_pixel.pixel[0].in_channels == 32 // 4  # conv_s1's output width
    texts = ["the grasper", "the needle driver"]
    with torch.no_grad():
        frames = plain.encode_frames(torch.randn(2, 3, SIZE, SIZE))
        text = plain.encode_text(texts)
        history = [frames[0].image_embed]
        before = plain.refer(frames[1], text, history)
        # Scale 0 (a fresh head): stage 1 exactly as without it.
        silent = with_head.refer(frames[1], text, history)
        torch.testing.assert_close(silent.low_res_masks, before.low_res_masks)
        with_head.text_pixel.scale.fill_(2.0)
        after = with_head.refer(frames[1], text, history)
        fused = with_head.cross_modal_fusion(text, frames[1].image_embed, history)
        bias = with_head.text_pixel(
            fused.sparse_tokens[:, -1], frames[1].high_res[1], (SIZE // 4, SIZE // 4)
        )
    assert bias.abs().amax() > 0.1
    torch.testing.assert_close(after.low_res_masks, before.low_res_masks + bias)
    torch.testing.assert_close(after.object_score_logits, before.object_score_logits)
    # The texts get different maps: the head reads the fused text, not only the image.
    assert not torch.allclose(bias[0], bias[1])


def test_gradients_reach_the_head(clip_dir):
    _, with_head = _pair(clip_dir)
    with torch.no_grad():
        with_head.text_pixel.scale.fill_(1.0)
    with_head.train()
    frames = with_head.encode_frames(torch.randn(1, 3, SIZE, SIZE))
    out = with_head.refer(frames[0], with_head.encode_text(["the grasper"]))
    out.low_res_masks.square().mean().backward()
    for name, parameter in with_head.text_pixel.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_checkpoints_carry_the_head(clip_dir, tmp_path):
    plain, with_head = _pair(clip_dir)
    with torch.no_grad():
        with_head.text_pixel.scale.fill_(0.5)
    path = tmp_path / "with_head.pt"
    save_referring_checkpoint(with_head, path)
    rebuilt = build_resurgsam2(micro_config(SIZE), checkpoint=path, load_text_encoder=False)
    assert rebuilt.referring_cfg.text_pixel == TextPixelConfig()
    assert rebuilt.text_pixel.scale.item() == 0.5
    # A checkpoint without the head starts one only when asked to.
    old = tmp_path / "plain.pt"
    save_referring_checkpoint(plain, old)
    fresh = ReSurgSAM2(plain.cfg, with_head.referring_cfg)
    with pytest.raises(CheckpointMismatchError, match="missing keys: text_pixel"):
        load_referring_checkpoint(fresh, old)
    report = load_referring_checkpoint(fresh, old, init_from=("text_pixel",))
    assert report.initialised and all(k.startswith("text_pixel.") for k in report.initialised)
    assert fresh.text_pixel.scale.item() == 0.0


def test_without_high_res_features_the_head_reads_the_stride_16_map(clip_dir):
    cfg = micro_config(SIZE)
    cfg = cfg.model_copy(
        update={
            "mask_decoder": cfg.mask_decoder.model_copy(update={"use_high_res_features": False})
        }
    )
    plain = tiny_model(clip_dir, size=SIZE)
    model = ReSurgSAM2(
        cfg, plain.referring_cfg.model_copy(update={"text_pixel": TextPixelConfig()})
    )
    model.text_encoder = plain.text_encoder
    assert model.text_pixel.pixel[0].in_channels == 32  # the neck's width
    with torch.no_grad():
        model.text_pixel.scale.fill_(1.0)
        frame = model.eval().encode_frames(torch.randn(1, 3, SIZE, SIZE))[0]
        assert frame.high_res == []
        out = model.refer(frame, model.encode_text(["the grasper"]))
    assert out.low_res_masks.shape == (1, 1, SIZE // 4, SIZE // 4)
