"""Attention with int8 query-key products, for the memory attention on CPU (fast mode).

In the fast CPU mode the memory attention's fused attention kernel was most of a frame
(benchmarks/README.md section 6): each object's 1,024 queries attend to themselves and to
~7,200 memory keys of width 256, 4 layers a frame, and int8 weights in the projections do not
touch it. This kernel computes the same attention with the query-key products in int8 (exact int32 accumulation,
VNNI dot products) and the probability-value products in bfloat16 where the CPU has native
bf16 (else float32); the softmax stays float32.

Quantization: keys per channel, queries per row. The keys' channel scales are folded into the
queries before those are quantized, so the int32 products need one scale per query row:

    k[j, c] ~ s[c] * K[j, c]          (K int8; s: the keys' channel absmax / 127)
    q[i, c] * s[c] ~ t[i] * Q[i, c]   (Q int8; t: the scaled query row's absmax / 127)
    q[i] . k[j] ~ t[i] * (Q[i] . K[j])

Queries are processed in blocks of rows so that a block's score matrix stays in cache rather
than filling a [queries x keys] buffer per call.

Small attentions go to the fused float kernel instead (`takes_int8_path`): quantizing costs
passes over the inputs that only pay off when the score matrix is large against the values
(benchmarks/bench_int8_attention.py measures where, per call). The micro model at 128 px
keeps the fused kernel throughout; Hiera at 512 px uses this one for its self- and
cross-attention.

Inference only, CPU only; the network's fidelity with it is measured by
benchmarks/bench_fast_mode.py, not assumed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Query rows x keys per 64 value channels below which the fused float kernel is faster
# (benchmarks/README.md section 6, the per-call table of benchmarks/bench_int8_attention.py).
MIN_SCORES = 1 << 18
BLOCK_ROWS = 256  # query rows per block: 256 x 7,232 scores = 7.4 MB (measured 64-512 alike)


def int8_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    values_dtype: torch.dtype = torch.bfloat16,
    block_rows: int = BLOCK_ROWS,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q: [B, H, Lq, D] (B may be 1, or an expanded view), k, v:
    [B, H, Lk, D], float32; returns [B, H, Lq, D] float32. `values_dtype` is the dtype of the
    probability-value product (bfloat16, or float32 on CPUs without native bf16)."""
    if q.device.type != "cpu":
        raise ValueError(f"int8 attention runs on CPU only; got tensors on {q.device}")
    batch, heads, queries, width = k.shape[0], k.shape[1], q.shape[-2], q.shape[-1]
    q = q.expand(batch, heads, queries, width)
    if not takes_int8_path(queries, k.shape[-2], v.shape[-1]):
        return F.scaled_dot_product_attention(q, k, v)
    out = q.new_empty(batch, heads, queries, v.shape[-1])
    for b in range(batch):
        for h in range(heads):
            out[b, h] = _one_head(q[b, h], k[b, h], v[b, h], values_dtype, block_rows)
    return out


def takes_int8_path(queries: int, keys: int, value_width: int) -> bool:
    """Whether an attention of this size runs in int8 (else the fused float kernel): the
    int8 path's fixed passes pay off once the scores outweigh the value product."""
    return queries * keys * 64 >= MIN_SCORES * value_width


def _one_head(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, values_dtype: torch.dtype, block_rows: int
) -> torch.Tensor:
    key_scale = k.abs().amax(dim=0).clamp_min(1e-12) / 127.0  # [D]
    keys = torch.round(k / key_scale).to(torch.int8).t()  # [D, Lk]
    scaled = q * key_scale
    row_scale = scaled.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # [Lq, 1]
    queries = torch.round(scaled / row_scale).to(torch.int8)
    row_scale = row_scale * q.shape[-1] ** -0.5  # the softmax temperature, folded in
    values = v.to(values_dtype)
    out = q.new_empty(q.shape[0], v.shape[-1])
    for start in range(0, q.shape[0], block_rows):
        rows = slice(start, start + block_rows)
        scores = torch._int_mm(queries[rows], keys).float().mul_(row_scale[rows])
        probabilities = torch.softmax(scores, dim=-1).to(values_dtype)
        out[rows] = probabilities @ values
    return out
