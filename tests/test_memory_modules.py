"""Memory attention, RoPE and memory encoder: exact hand cases and parity with Meta's `sam2`."""

from __future__ import annotations

import math

import pytest
import torch
from sam2.modeling.memory_attention import MemoryAttention as RefMemoryAttention
from sam2.modeling.memory_attention import MemoryAttentionLayer as RefMemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock as RefCXBlock
from sam2.modeling.memory_encoder import Fuser as RefFuser
from sam2.modeling.memory_encoder import MaskDownSampler as RefMaskDownSampler
from sam2.modeling.memory_encoder import MemoryEncoder as RefMemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine as RefPositionEmbeddingSine
from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis
from sam2.modeling.sam.transformer import RoPEAttention as RefRoPEAttention

from surgray.model.checkpoints.variants import micro_config
from surgray.model.sam2.config import (
    MemoryAttentionConfig,
    MemoryEncoderConfig,
    RoPEAttentionConfig,
)
from surgray.model.sam2.memory_attention import MemoryAttention, RoPEAttention
from surgray.model.sam2.memory_encoder import MemoryEncoder
from surgray.model.sam2.rope import AxialRotaryEmbedding, grid_size
from surgray.model.sam2.types import MemoryEncoderOutput

COS1, SIN1 = 0.5403023058681398, 0.8414709848078965  # cos(1), sin(1)
COS001, SIN001 = 0.9999500004166653, 0.009999833334166664  # cos(0.01), sin(0.01)


# ---------------------------------------------------------------- reference builders


def _ref_rope(cfg: RoPEAttentionConfig, feat: int) -> RefRoPEAttention:
    return RefRoPEAttention(
        embedding_dim=cfg.embedding_dim,
        num_heads=cfg.num_heads,
        downsample_rate=cfg.downsample_rate,
        dropout=cfg.dropout,
        kv_in_dim=cfg.kv_in_dim,
        rope_theta=cfg.rope_theta,
        rope_k_repeat=cfg.rope_k_repeat,
        feat_sizes=(feat, feat),
    )


def _ref_memory_attention(cfg: MemoryAttentionConfig, feat: int) -> RefMemoryAttention:
    lc = cfg.layer
    layer = RefMemoryAttentionLayer(
        activation=lc.activation,
        cross_attention=_ref_rope(lc.cross_attention, feat),
        d_model=lc.d_model,
        dim_feedforward=lc.dim_feedforward,
        dropout=lc.dropout,
        pos_enc_at_attn=lc.pos_enc_at_attn,
        pos_enc_at_cross_attn_keys=lc.pos_enc_at_cross_attn_keys,
        pos_enc_at_cross_attn_queries=lc.pos_enc_at_cross_attn_queries,
        self_attention=_ref_rope(lc.self_attention, feat),
    )
    return RefMemoryAttention(
        d_model=cfg.d_model,
        pos_enc_at_input=cfg.pos_enc_at_input,
        layer=layer,
        num_layers=cfg.num_layers,
    )


def _ref_memory_encoder(cfg: MemoryEncoderConfig) -> RefMemoryEncoder:
    md, cx, pe = cfg.mask_downsampler, cfg.fuser.layer, cfg.position_encoding
    return RefMemoryEncoder(
        out_dim=cfg.out_dim,
        mask_downsampler=RefMaskDownSampler(
            embed_dim=md.embed_dim,
            kernel_size=md.kernel_size,
            stride=md.stride,
            padding=md.padding,
            total_stride=md.total_stride,
        ),
        fuser=RefFuser(
            RefCXBlock(
                dim=cx.dim,
                kernel_size=cx.kernel_size,
                padding=cx.padding,
                drop_path=cx.drop_path,
                layer_scale_init_value=cx.layer_scale_init_value,
                use_dwconv=cx.use_dwconv,
            ),
            num_layers=cfg.fuser.num_layers,
            dim=cx.dim,
            input_projection=cfg.fuser.input_projection,
        ),
        position_encoding=RefPositionEmbeddingSine(
            num_pos_feats=pe.num_pos_feats,
            normalize=pe.normalize,
            scale=pe.scale,
            temperature=pe.temperature,
        ),
        in_dim=cfg.in_dim,
    )


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh (LayerNorm scales around 1, the rest around 0), so no
    weight is trivially zero or one and layer scale (1e-6 at init) really contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            fan_in = p[0].numel() if p.ndim > 1 else 1
            if p.ndim == 1 and ("norm" in name or name.endswith("gamma") or ".1.weight" in name):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(max(fan_in, 1)) * (1.0 if p.ndim > 1 else 0.2))


def _official_attention_cfg() -> MemoryAttentionConfig:
    return MemoryAttentionConfig()


def _micro() -> tuple[MemoryAttentionConfig, MemoryEncoderConfig]:
    cfg = micro_config()
    return cfg.memory_attention, cfg.memory_encoder


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- RoPE: hand cases


def test_rope_angles_2x2_head_dim_4_by_hand():
    # head_dim 4 -> one frequency per axis, theta^(-0/4) = 1. Pair 0 (channels 0,1) turns by the
    # column, pair 1 (channels 2,3) by the row. Row-major tokens: t0 (r0,c0), t1 (r0,c1),
    # t2 (r1,c0), t3 (r1,c1).
    rope = AxialRotaryEmbedding(head_dim=4)
    assert rope.angles(2, 2).tolist() == [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 4)  # each pair is (1, 0): rotation gives (cos, sin)
    expected = torch.tensor(
        [
            [1.0, 0.0, 1.0, 0.0],
            [COS1, SIN1, 1.0, 0.0],
            [1.0, 0.0, COS1, SIN1],
            [COS1, SIN1, COS1, SIN1],
        ]
    )
    torch.testing.assert_close(rope.rotate(x, 2, 2), expected, rtol=0, atol=1e-6)
    # (0, 1) turns to (-sin, cos)
    y = torch.tensor([[0.0, 1.0, 0.0, 2.0]] * 4)
    torch.testing.assert_close(
        rope.rotate(y, 2, 2)[3], torch.tensor([-SIN1, COS1, -2 * SIN1, 2 * COS1]), rtol=0, atol=1e-6
    )


def test_rope_head_dim_8_second_frequency_and_non_square_grid():
    # head_dim 8 -> frequencies theta^(-0/8) = 1 and theta^(-4/8) = 1/100. Pairs 0,1 use the column
    # (x1, x0.01), pairs 2,3 the row. On a 2-row, 1-column grid token 1 is (row 1, col 0).
    rope = AxialRotaryEmbedding(head_dim=8)
    assert rope.angles(2, 1)[1].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.01])
    assert rope.angles(1, 2)[1].tolist() == pytest.approx([1.0, 0.01, 0.0, 0.0])
    x = torch.tensor([[1.0, 0.0] * 4] * 2)
    expected_t1 = torch.tensor([1.0, 0.0, 1.0, 0.0, COS1, SIN1, COS001, SIN001])
    torch.testing.assert_close(rope.rotate(x, 2, 1)[1], expected_t1, rtol=0, atol=1e-6)


def test_rope_repeat_over_memory_frames_and_excluded_pointer_tokens():
    rope = AxialRotaryEmbedding(head_dim=4)
    one_frame = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 4)
    pointers = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    keys = torch.cat([one_frame, one_frame, pointers])  # 2 frames of 2x2, then 2 pointer tokens
    out = rope.rotate(keys, 2, 2, repeat=2, num_exclude=2)
    frame = rope.rotate(one_frame, 2, 2)
    torch.testing.assert_close(out[:4], frame)
    torch.testing.assert_close(out[4:8], frame)  # the second frame gets the same rotation
    assert torch.equal(out[8:], pointers)  # pointer tokens untouched
    assert out[5].tolist() == pytest.approx([COS1, SIN1, 1.0, 0.0])


def test_rope_tables_cached_per_size_and_device():
    rope = AxialRotaryEmbedding(head_dim=4)
    a = rope.tables(2, 2, "cpu")
    assert rope.tables(2, 2, "cpu")[0] is a[0]
    assert rope.tables(3, 3, "cpu")[0].shape == (9, 2)
    assert len(rope._cache) == 2


def test_rope_matches_reference_rotation():
    # Reference: complex form; ours: real form. Same numbers at 8x8, head dim 16, 3 memory frames
    # and 5 excluded tokens.
    torch.manual_seed(0)
    q = torch.randn(2, 1, 64, 16)
    k = torch.randn(2, 1, 3 * 64 + 5, 16)
    cis = compute_axial_cis(dim=16, end_x=8, end_y=8)
    ref_q, ref_k = apply_rotary_enc(q, k[:, :, :192], freqs_cis=cis, repeat_freqs_k=True)
    rope = AxialRotaryEmbedding(head_dim=16)
    torch.testing.assert_close(rope.rotate(q, 8, 8), ref_q, rtol=0, atol=1e-6)
    ours_k = rope.rotate(k, 8, 8, repeat=3, num_exclude=5)
    torch.testing.assert_close(ours_k[:, :, :192], ref_k, rtol=0, atol=1e-6)
    assert torch.equal(ours_k[:, :, 192:], k[:, :, 192:])


def test_rope_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        AxialRotaryEmbedding(head_dim=6)
    rope = AxialRotaryEmbedding(head_dim=4)
    with pytest.raises(ValueError, match="do not make 1 map"):
        rope.rotate(torch.zeros(5, 4), 2, 2)
    with pytest.raises(ValueError, match="head dimension 4"):
        rope.rotate(torch.zeros(4, 8), 2, 2)
    with pytest.raises(ValueError, match="square"):
        grid_size(6)
    assert grid_size(6, feat_hw=(2, 3)) == (2, 3)
    assert grid_size(6, configured_wh=(3, 2)) == (2, 3)  # reference order: (w, h)
    with pytest.raises(ValueError, match="does not match"):
        grid_size(6, feat_hw=(2, 2))


# ---------------------------------------------------------------- keys and shapes


@pytest.mark.parametrize("which", ["official", "micro"])
def test_memory_attention_state_dict_matches_reference(which):
    cfg = _official_attention_cfg() if which == "official" else _micro()[0]
    ours, ref = MemoryAttention(cfg), _ref_memory_attention(cfg, 8)
    assert _shapes(ours) == _shapes(ref)
    assert (
        len(_shapes(ours)) == 2 + cfg.num_layers * 26
    )  # per layer: 2 attentions x 8, 2 linears x 2, 3 norms x 2


@pytest.mark.parametrize("which", ["official", "micro"])
def test_memory_encoder_state_dict_matches_reference(which):
    cfg = MemoryEncoderConfig() if which == "official" else _micro()[1]
    ours, ref = MemoryEncoder(cfg), _ref_memory_encoder(cfg)
    assert _shapes(ours) == _shapes(ref)
    assert "fuser.layers.1.gamma" in _shapes(ours)
    assert _shapes(ours)["mask_downsampler.encoder.12.weight"] == (cfg.in_dim, 256, 1, 1)


# ---------------------------------------------------------------- parity


def _attention_inputs(
    cfg: MemoryAttentionConfig, side: int, frames: int, ptr_tokens: int, seed: int
):
    gen = torch.Generator().manual_seed(seed)
    c, cm = cfg.d_model, cfg.layer.cross_attention.kv_in_dim
    b, length, m = 2, side * side, frames * side * side + ptr_tokens
    return (
        torch.randn(b, length, c, generator=gen),
        torch.randn(b, length, c, generator=gen),
        torch.randn(b, m, cm, generator=gen),
        torch.randn(b, m, cm, generator=gen),
    )


def _run_pair(cfg, side, frames, ptr_tokens, seed=0):
    ref = _ref_memory_attention(cfg, side).eval()
    _randomise(ref, seed)
    ours = MemoryAttention(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    curr, curr_pos, memory, memory_pos = _attention_inputs(cfg, side, frames, ptr_tokens, seed + 1)
    with torch.no_grad():
        expected = ref(
            curr=curr.transpose(0, 1),
            memory=memory.transpose(0, 1),
            curr_pos=curr_pos.transpose(0, 1),
            memory_pos=memory_pos.transpose(0, 1),
            num_obj_ptr_tokens=ptr_tokens,
        ).transpose(0, 1)
    return ours, (curr, curr_pos, memory, memory_pos), expected


@pytest.mark.parametrize(
    ("which", "side", "frames", "ptr_tokens"),
    [
        ("official", 32, 4, 64),  # cond + 3 recent frames, 16 pointers split into 4 tokens each
        ("official", 8, 7, 40),
        ("micro", 8, 3, 12),
    ],
)
def test_memory_attention_parity_with_reference(which, side, frames, ptr_tokens):
    cfg = _official_attention_cfg() if which == "official" else _micro()[0]
    ours, inputs, expected = _run_pair(cfg, side, frames, ptr_tokens)
    with torch.no_grad():
        got = ours(*inputs, num_obj_ptr_tokens=ptr_tokens)
    assert got.shape == expected.shape == inputs[0].shape
    assert expected.abs().mean() > 0.1  # a real signal, not a vanishing output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_memory_attention_parity_can_fail():
    cfg = _micro()[0]
    # 4x4 map, 3 frames, 16 pointer tokens (8 pointers of 2 tokens): the pointers happen to fill
    # one whole map, so they can also be (wrongly) rotated as a 4th frame.
    ours, inputs, expected = _run_pair(cfg, 4, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(*inputs, num_obj_ptr_tokens=16), expected, rtol=1e-5, atol=1e-5
        )
        # rotating the pointer tokens as if they were on the grid changes the output
        assert (ours(*inputs, num_obj_ptr_tokens=0) - expected).abs().max() > 1e-3
        # so does a one-weight perturbation
        ours.layers[-1].cross_attn_image.k_proj.weight[0, 0] += 1e-2
        assert (ours(*inputs, num_obj_ptr_tokens=16) - expected).abs().max() > 1e-5


def test_memory_attention_non_square_map_and_bad_inputs():
    cfg = _micro()[0]
    ours = MemoryAttention(cfg).eval()
    c, cm = cfg.d_model, cfg.layer.cross_attention.kv_in_dim
    curr = torch.randn(1, 6, c)
    memory = torch.randn(1, 2 * 6 + 4, cm)
    out = ours(curr, torch.zeros_like(curr), memory, torch.zeros_like(memory), 4, feat_hw=(2, 3))
    assert out.shape == (1, 6, c)
    with pytest.raises(ValueError, match="square"):
        ours(curr, torch.zeros_like(curr), memory, torch.zeros_like(memory), 4)
    with pytest.raises(ValueError, match="whole number"):
        ours(curr, torch.zeros_like(curr), memory, torch.zeros_like(memory), 3, feat_hw=(2, 3))
    with pytest.raises(ValueError, match="memory must be"):
        ours(curr, torch.zeros_like(curr), memory[0], memory[0], 4, feat_hw=(2, 3))
    with pytest.raises(ValueError, match="num_obj_ptr_tokens"):
        ours(curr, torch.zeros_like(curr), memory, torch.zeros_like(memory), 99, feat_hw=(2, 3))


def test_self_attention_without_k_repeat_rejects_longer_keys():
    attn = RoPEAttention(RoPEAttentionConfig(embedding_dim=8, num_heads=1))
    with pytest.raises(ValueError, match="rope_k_repeat"):
        attn(torch.zeros(1, 4, 8), torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))


@pytest.mark.parametrize(("which", "side"), [("official", 8), ("micro", 8), ("micro", 4)])
@pytest.mark.parametrize("skip_sigmoid", [False, True])
def test_memory_encoder_parity_with_reference(which, side, skip_sigmoid):
    cfg = MemoryEncoderConfig() if which == "official" else _micro()[1]
    ref = _ref_memory_encoder(cfg).eval()
    _randomise(ref, 3)
    ours = MemoryEncoder(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(4)
    pix = torch.randn(2, cfg.in_dim, side, side, generator=gen)
    masks = torch.randn(2, 1, side * 16, side * 16, generator=gen) * 5
    with torch.no_grad():
        expected = ref(pix, masks, skip_mask_sigmoid=skip_sigmoid)
        got = ours(pix, masks, skip_mask_sigmoid=skip_sigmoid)
    assert isinstance(got, MemoryEncoderOutput)
    assert got.features.shape == (2, cfg.out_dim, side, side)
    assert expected["vision_features"].abs().mean() > 0.1
    torch.testing.assert_close(got.features, expected["vision_features"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pos_enc, expected["vision_pos_enc"][0], rtol=1e-5, atol=1e-5)
    # perturbation: parity is sensitive to a single weight
    with torch.no_grad():
        ours.fuser.layers[0].pwconv2.weight[0, 0] += 1e-2
        assert (
            ours(pix, masks, skip_mask_sigmoid=skip_sigmoid).features - got.features
        ).abs().max() > 1e-5


def test_memory_encoder_bad_inputs():
    ours = MemoryEncoder(_micro()[1])
    with pytest.raises(ValueError, match="masks must be"):
        ours(torch.zeros(1, 32, 4, 4), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="pix_feat must be"):
        ours(torch.zeros(1, 16, 4, 4), torch.zeros(1, 1, 64, 64))
