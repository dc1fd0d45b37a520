"""The int8 attention kernel of fast mode (`surgray.model.int8_attention`) and how the memory
attention uses it: exact where int8 represents the inputs exactly, close elsewhere, blocks of
query rows that change nothing, values projected after the attention with one head, and the
`int8_attn` precision that installs it (micro model, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from surgray.model import int8_attention as kernel_module
from surgray.model.int8_attention import int8_attention
from surgray.model.sam2.config import RoPEAttentionConfig
from surgray.model.sam2.memory_attention import MemoryAttentionLayer, RoPEAttention
from surgray.tracking.precision import PrecisionError, apply_precision, resolve_precision


def _reference(q, k, v):
    """softmax(q k^T / sqrt(d)) v in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v


@pytest.fixture
def every_size(monkeypatch):
    """The int8 path for any size (below `MIN_SCORES` the fused float kernel runs)."""
    monkeypatch.setattr(kernel_module, "MIN_SCORES", 0)


def test_small_attentions_run_the_fused_float_kernel():
    q, k, v = torch.randn(1, 1, 64, 32), torch.randn(2, 1, 7 * 64, 32), torch.randn(2, 1, 7 * 64, 8)
    assert not kernel_module.takes_int8_path(64, 7 * 64, 8)
    expected = F.scaled_dot_product_attention(q.expand(2, -1, -1, -1), k, v)
    assert torch.equal(int8_attention(q, k, v), expected)


def test_the_int8_path_starts_where_it_was_measured_to_pay_off():
    """benchmarks/README.md section 6, per call with 3 objects: 64-channel values at 12x12
    (154k scores) 0.80x the fused kernel, at 16x16 (475k) 1.49x; 256-channel values at 24x24
    (332k) 0.70x, at 32x32 (1.05M) 1.16x."""
    assert not kernel_module.takes_int8_path(144, 7 * 144 + 64, 64)
    assert kernel_module.takes_int8_path(256, 7 * 256 + 64, 64)
    assert not kernel_module.takes_int8_path(576, 576, 256)
    assert kernel_module.takes_int8_path(1024, 1024, 256)  # Hiera at 512 px: self-attention
    assert kernel_module.takes_int8_path(1024, 7 * 1024 + 64, 64)  # and cross-attention


def test_exact_where_int8_holds_the_inputs_exactly(every_size):
    """Keys n * 0.01 with every channel reaching 127 steps (their scale is 0.01); queries whose
    rows, times that scale, are m * 1e-4 with every row reaching 127 steps: both quantize
    without error, so only float rounding separates the kernel from float64 attention."""
    generator = torch.Generator().manual_seed(0)
    n = torch.randint(-126, 127, (1, 1, 300, 16), generator=generator).double()
    n[..., 0, :] = 127.0
    m = torch.randint(-126, 127, (1, 1, 40, 16), generator=generator).double()
    m[..., :, 0] = -127.0
    k, q = (n * 0.01).float(), (m * 1e-4 / 0.01).float()
    v = torch.randn(1, 1, 300, 8, generator=generator)
    got = int8_attention(q, k, v, values_dtype=torch.float32)
    expected = _reference(q, k, v)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-6)
    spread = _reference(q, k, torch.eye(300)[None, None]).amax(-1)
    assert float(spread.max()) > 2 / 300  # the weights are not uniform: the scores matter


def test_close_to_the_fused_kernel_on_random_inputs_and_blocks_change_nothing(every_size):
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 100, 64, generator=generator)  # one query row set for 3 objects
    k = torch.randn(3, 1, 530, 64, generator=generator)
    v = torch.randn(3, 1, 530, 32, generator=generator)
    expected = F.scaled_dot_product_attention(q.expand(3, -1, -1, -1), k, v)
    for dtype, limit in ((torch.float32, 0.02), (torch.bfloat16, 0.03)):
        got = int8_attention(q, k, v, values_dtype=dtype)
        assert got.shape == expected.shape and got.dtype == torch.float32
        error = float((got - expected).norm() / expected.norm())
        assert 0 < error < limit, (dtype, error)  # quantized, not a float copy
    whole = int8_attention(q, k, v, values_dtype=torch.float32, block_rows=256)
    blocks = int8_attention(q, k, v, values_dtype=torch.float32, block_rows=7)
    # The int32 scores are exact; only the value product's float summation order may differ.
    assert torch.allclose(whole, blocks, rtol=0, atol=1e-6)
    for b in range(3):  # an expanded query is each object's own query
        alone = int8_attention(q, k[b : b + 1], v[b : b + 1], values_dtype=torch.float32)
        assert torch.allclose(alone[0], whole[b], rtol=0, atol=1e-6)


def _float_kernel(q, k, v):
    return F.scaled_dot_product_attention(q.expand(k.shape[0], -1, -1, -1), k, v)


@pytest.mark.parametrize("heads", [1, 2])
def test_a_replacement_kernel_sees_what_sdpa_sees(heads):
    """With one head the kernel gets the raw memories and the values are projected after it
    (bias included): the same output as projecting first, up to float rounding."""
    torch.manual_seed(2)
    cfg = RoPEAttentionConfig(num_heads=heads, kv_in_dim=64, rope_k_repeat=True, feat_sizes=(4, 4))
    attention = RoPEAttention(cfg).eval()
    torch.nn.init.normal_(attention.v_proj.bias)
    q, memory = torch.randn(1, 16, 256), torch.randn(3, 2 * 16 + 4, 64)
    seen = []

    def spying_kernel(q, k, v):
        seen.append(v.shape[-1])
        return _float_kernel(q, k, v)

    with torch.inference_mode():
        expected = attention(q, memory, memory, num_k_exclude_rope=4)
        attention.attention_kernel = spying_kernel
        got = attention(q, memory, memory, num_k_exclude_rope=4)
    assert seen == [64 if heads == 1 else 256 // heads]
    assert torch.allclose(got, expected, atol=1e-5)


def test_training_ignores_the_replacement_kernel():
    attention = RoPEAttention(RoPEAttentionConfig(feat_sizes=(4, 4), dropout=0.0)).train()

    def refuse(q, k, v):
        raise AssertionError("the inference kernel ran in training")

    attention.attention_kernel = refuse
    x = torch.randn(2, 16, 256, requires_grad=True)
    attention(x, x, x).sum().backward()
    assert x.grad is not None


def test_int8_attn_precision_installs_the_kernel_on_a_copy():
    from surgray.model.checkpoints.variants import micro_config
    from surgray.model.sam2.network import SAM2Model

    plan = resolve_precision("int8_attn", "cpu")
    assert plan.int8_linears and plan.int8_attention and not plan.exact
    assert not resolve_precision("int8", "cpu").int8_attention
    with pytest.raises(PrecisionError, match="int8_attn runs on CPU only"):
        resolve_precision("int8_attn", "cuda")
    model = SAM2Model(micro_config(64)).eval()
    fast = apply_precision(model, plan)
    layers = [m for m in fast.modules() if isinstance(m, MemoryAttentionLayer)]
    assert layers and all(
        layer.self_attn.attention_kernel and layer.cross_attn_image.attention_kernel
        for layer in layers
    )
    assert all(  # the caller's model keeps the fused kernel
        m.attention_kernel is None for m in model.modules() if isinstance(m, RoPEAttention)
    )


def test_int8_attn_tracker_stays_close_to_fp32(every_size):
    from test_fast_mode import track

    from devtools.sam2_reference import randomize_
    from surgray.model.checkpoints.variants import micro_config
    from surgray.model.sam2.network import SAM2Model
    from surgray.tracking.tracker import Tracker

    torch.set_num_threads(1)
    model = SAM2Model(micro_config(64))
    randomize_(model, 3)
    model.eval()
    exact = track(Tracker(model, precision="fp32", postprocess={"fill_hole_area": 0}))
    fast = track(Tracker(model, precision="int8_attn", postprocess={"fill_hole_area": 0}))
    assert all(m.any() for m in exact)
    agreement = np.mean([(a == b).mean() for a, b in zip(exact, fast)])
    assert agreement > 0.95, agreement
