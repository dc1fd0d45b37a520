"""The image encoder (Hiera trunk + FPN neck) against Meta's reference `sam2` modules.

The reference modules are built in Python with the same hyper-parameters as our configs; both
get the same random weights, and their outputs must agree to about 1e-5 (relative).
"""

from __future__ import annotations

import math

import pytest
import torch
from sam2.modeling.backbones.hieradet import Hiera as RefHiera
from sam2.modeling.backbones.image_encoder import FpnNeck as RefFpnNeck
from sam2.modeling.backbones.image_encoder import ImageEncoder as RefImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine as RefPositionEmbeddingSine

from surgray.model.checkpoints.variants import get_variant, micro_config
from surgray.model.sam2.config import ImageEncoderConfig
from surgray.model.sam2.image_encoder import ImageEncoder
from surgray.model.sam2.types import BackboneOutput

TOLERANCE = 1e-5


def _reference(cfg: ImageEncoderConfig) -> RefImageEncoder:
    t, n, pe = cfg.trunk, cfg.neck, cfg.neck.position_encoding
    trunk = RefHiera(
        embed_dim=t.embed_dim,
        num_heads=t.num_heads,
        drop_path_rate=t.drop_path_rate,
        q_pool=t.q_pool,
        q_stride=t.q_stride,
        stages=t.stages,
        dim_mul=t.dim_mul,
        head_mul=t.head_mul,
        window_pos_embed_bkg_spatial_size=t.window_pos_embed_bkg_spatial_size,
        window_spec=t.window_spec,
        global_att_blocks=t.global_att_blocks,
    )
    neck = RefFpnNeck(
        position_encoding=RefPositionEmbeddingSine(
            pe.num_pos_feats, temperature=pe.temperature, normalize=pe.normalize, scale=pe.scale
        ),
        d_model=n.d_model,
        backbone_channel_list=list(n.backbone_channel_list),
        kernel_size=n.kernel_size,
        stride=n.stride,
        padding=n.padding,
        fpn_interp_model=n.fpn_interp_model,
        fuse_type=n.fuse_type,
        fpn_top_down_levels=list(n.fpn_top_down_levels),
    )
    return RefImageEncoder(trunk, neck, scalp=cfg.scalp)


def _micro(**trunk_changes) -> ImageEncoderConfig:
    cfg = micro_config().image_encoder
    # Block 2 pools while windowed; block 3 is global; stride-32 entry block pools windows.
    assert cfg.trunk.global_att_blocks == (3,)
    trunk = cfg.trunk.model_copy(update=trunk_changes)
    return cfg.model_copy(update={"trunk": trunk})


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights with unit-scale activations, so attention is sharp and no branch is negligible."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if "norm" in name and name.endswith("weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith("bias"):
            state[name] = 0.02 * noise
        elif "pos_embed" in name:
            state[name] = 0.5 * noise
        else:
            state[name] = noise / math.sqrt(value[0].numel())
    return state


def _pair(cfg: ImageEncoderConfig, seed: int = 0) -> tuple[ImageEncoder, RefImageEncoder]:
    torch.manual_seed(seed)
    ours, ref = ImageEncoder(cfg).eval(), _reference(cfg).eval()
    state = _random_state(ours, seed)
    ours.load_state_dict(state)
    ref.load_state_dict(state)
    return ours, ref


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _worst_error(ours: BackboneOutput, ref: dict) -> float:
    assert len(ours.backbone_fpn) == len(ref["backbone_fpn"])
    assert len(ours.vision_pos_enc) == len(ref["vision_pos_enc"])
    pairs = list(zip(ours.backbone_fpn, ref["backbone_fpn"]))
    pairs += list(zip(ours.vision_pos_enc, ref["vision_pos_enc"]))
    pairs.append((ours.vision_features, ref["vision_features"]))
    return max(_relative_error(a, b) for a, b in pairs)


def _run_both(ours, ref, images) -> tuple[BackboneOutput, dict]:
    with torch.no_grad():
        return ours(images), ref(images)


@pytest.mark.parametrize("size", ["tiny", "small", "base_plus", "large"])
def test_state_dict_and_block_layout_match_reference(size):
    cfg = get_variant(f"sam2.1_hiera_{size}").image_encoder
    with torch.device("meta"):  # shapes only: no need to allocate and initialise ours
        ours = ImageEncoder(cfg)
    ref = _reference(cfg)
    ours_shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    ref_shapes = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert ours_shapes == ref_shapes
    assert ours.trunk.channel_list == ref.trunk.channel_list
    # Window sizes and pooling have no parameters: compare them block by block.
    ours_layout = [
        (b.attn.window, b.pool_stride is not None, b.attn.num_heads) for b in ours.trunk.blocks
    ]
    ref_layout = [
        (b.window_size, b.q_stride is not None, b.attn.num_heads) for b in ref.trunk.blocks
    ]
    assert ours_layout == ref_layout


def test_drop_path_rates_match_reference():
    cfg = _micro(drop_path_rate=0.3)
    ours, ref = ImageEncoder(cfg), _reference(cfg)
    ours_rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in ours.trunk.blocks]
    ref_rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in ref.trunk.blocks]
    assert ours_rates == ref_rates
    assert ref_rates[-1] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("height", "width"),
    [
        (128, 128),  # every map a multiple of its window
        (96, 160),  # stride-16 map 6x10 with window 4: padded windows, pooled padded windows
    ],
)
def test_micro_matches_reference(height, width):
    ours, ref = _pair(_micro())
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    out, ref_out = _run_both(ours, ref, images)
    assert isinstance(out, BackboneOutput)
    assert [tuple(f.shape) for f in out.backbone_fpn] == [
        (2, 32, height // s, width // s) for s in (4, 8, 16)
    ]
    assert _worst_error(out, ref_out) < TOLERANCE


def test_tiny_matches_reference_at_512():
    # At 512 the stride-16 map (32) is padded to windows of 14, and the stride-32 stage's
    # entry block pools padded windows of 14 into windows of 7.
    ours, ref = _pair(get_variant("sam2.1_hiera_tiny").image_encoder)
    images = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    out, ref_out = _run_both(ours, ref, images)
    assert out.vision_features.shape == (1, 256, 32, 32)
    assert _worst_error(out, ref_out) < TOLERANCE


@pytest.mark.parametrize(
    ("key", "index"),
    [
        ("trunk.blocks.2.attn.qkv.weight", (3, 1)),  # a pooling, windowed block
        ("trunk.blocks.3.attn.qkv.weight", (40, 2)),  # the global block
        ("trunk.pos_embed_window", (0, 5, 1, 2)),
        ("trunk.pos_embed", (0, 2, 3, 0)),
        ("neck.convs.0.conv.weight", (1, 7, 0, 0)),  # coarsest lateral: top-down fusion only
    ],
)
def test_one_changed_weight_breaks_parity(key, index):
    ours, ref = _pair(_micro())
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours.state_dict()[key][index] += 0.5
    out, ref_out = _run_both(ours, ref, images)
    assert _worst_error(out, ref_out) > 1e-3


def test_cached_position_embedding_follows_loaded_weights():
    ours, ref = _pair(_micro())
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    _run_both(ours, ref, images)  # fills the caches
    new_state = _random_state(ours, seed=5)
    ours.load_state_dict(new_state)
    ref.load_state_dict(new_state)
    out, ref_out = _run_both(ours, ref, images)
    assert _worst_error(out, ref_out) < TOLERANCE
    with torch.inference_mode():
        out = ours(images)
    assert _worst_error(out, ref_out) < TOLERANCE


def test_training_reaches_position_embeddings_and_drop_path_is_random():
    ours = ImageEncoder(_micro(drop_path_rate=0.5)).train()
    ours.load_state_dict(_random_state(ours, seed=6))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    first = ours(images)
    first.vision_features.sum().backward()
    assert ours.trunk.pos_embed.grad.abs().sum() > 0
    assert ours.trunk.pos_embed_window.grad.abs().sum() > 0
    with torch.no_grad():
        torch.manual_seed(8)
        a = ours(images).vision_features
        torch.manual_seed(9)
        b = ours(images).vision_features
        assert not torch.equal(a, b)
        ours.eval()
        assert torch.equal(ours(images).vision_features, ours(images).vision_features)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 4, 64, 64), "3 channels, got 4"),
        (torch.zeros(1, 1, 64, 64), "3 channels, got 1"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point.*uint8"),
        (torch.zeros(1, 3, 100, 64), "multiples of 32x32, got 100x64"),
        (torch.zeros(1, 3, 64, 48), "multiples of 32x32, got 64x48"),
        (torch.zeros(3, 64, 64), r"\[B, 3, H, W\], got shape \(3, 64, 64\)"),
    ],
)
def test_bad_images_raise_clear_errors(images, message):
    encoder = ImageEncoder(_micro())
    with pytest.raises(ValueError, match=message):
        encoder(images)


def test_neck_channels_must_match_trunk():
    cfg = _micro()
    neck = cfg.neck.model_copy(update={"backbone_channel_list": (64, 32, 16, 16)})
    with pytest.raises(ValueError, match="backbone_channel_list"):
        ImageEncoder(cfg.model_copy(update={"neck": neck}))
