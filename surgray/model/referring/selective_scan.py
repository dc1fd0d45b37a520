"""Mamba's selective scan (S6) in plain PyTorch, with mamba-ssm's fused kernel when it exists.

For every batch b, channel d and state n the scan runs the linear recurrence

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[t, n] * u[t]
    y[t] = sum_n C[t, n] * h[t, n]  (+ D[d] * u[t]), then y * silu(z[t]) when z is given

with delta optionally shifted by `delta_bias` and passed through softplus. Tensor layouts are
mamba-ssm's `selective_scan_fn`: u/delta/z [B, D, L], A [D, N], B/C either [D, N] (the same at
every step), [B, N, L] (input-dependent) or [B, G, N, L] (G groups of D/G channels).

`selective_scan` (the fast path) splits the sequence into chunks. Because A does not depend on
t, the decay between two steps of one chunk is exp(A * (S[t] - S[s])), with S the running sum of
delta counted from the chunk's first step, so a chunk's states come from one cumulative sum:

    h[t] = exp(A S[t]) * (exp(A delta[first]) h[before] + cumsum_s(exp(-A S[s]) delta[s] B[s] u[s]))

Only the chunk-to-chunk hand-over of states is a Python loop (L / chunk steps). exp(-A S) grows
along a chunk, so the chunk length is chosen per call such that |A| * sum(|delta|) over any
chunk's steps after its first stays below a bound the compute dtype represents comfortably (60
in float32, 600 in float64); at worst chunks are 1 step and the scan is the plain recurrence.
Chunks are processed in cache-sized blocks. Half-precision inputs are computed in float32, as
mamba-ssm does.

`selective_scan_reference` is the literal step-by-step recurrence, kept for tests and debugging.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch.nn import functional as F

Backend = Literal["auto", "chunked", "reference", "cuda"]

# Largest |exponent| allowed inside one chunk, per compute dtype (exp overflows at ~88 / ~709).
_EXPONENT_BOUND = {torch.float32: 60.0, torch.float64: 600.0}
DEFAULT_CHUNK = 32
# Elements of one [B, D, N, block] tensor: cache-sized on CPU, where the elementwise passes are
# memory-bound (~5x faster than one full-length pass); large on GPUs, where launches dominate.
_BLOCK_ELEMENTS = {"cpu": 1 << 20, "other": 1 << 26}


@functools.cache
def _fused_kernel():
    """mamba-ssm's CUDA `selective_scan_fn`, or None when the package cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA extension: both mean "not available"
        return None
    return selective_scan_fn


def fused_kernel_available() -> bool:
    return _fused_kernel() is not None


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: Backend = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    block_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y [B, D, L] in u's dtype; with `return_last_state`, also the final state [B, D, N].

    backend: "auto" uses mamba-ssm's fused kernel for CUDA tensors when it is importable and
    the chunked PyTorch scan otherwise; "chunked", "reference" and "cuda" force one path
    ("cuda" raises if the kernel is missing). chunk_size: longest chunk (shortened when the
    decay inside it would leave the dtype's range). block_size: tokens processed per
    vectorised pass (rounded to whole chunks); None sizes blocks for the device.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if backend == "cuda" or (backend == "auto" and u.is_cuda and fused_kernel_available()):
        kernel = _fused_kernel()
        if kernel is None:
            raise RuntimeError("backend='cuda' needs mamba_ssm, which cannot be imported here")
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "reference":
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    if backend not in ("auto", "chunked"):
        raise ValueError(f"unknown selective-scan backend {backend!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    dtype = _compute_dtype(u)
    dt, A_c, B_c, C_c = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, dtype)
    batch, dim, length = u.shape
    n_state = A.shape[1]
    k = _safe_chunk_length(dt, A_c, chunk_size, _EXPONENT_BOUND[dtype])
    pad = -length % k
    x = dt * u.to(dtype)
    if pad:
        # Padded steps have delta = 0 (no decay) and input 0, so they change nothing.
        dt, x = F.pad(dt, (0, pad)), F.pad(x, (0, pad))
        B_c, C_c = F.pad(B_c, (0, pad)), F.pad(C_c, (0, pad))
    per_token = batch * dim * n_state
    budget = _BLOCK_ELEMENTS["cpu" if u.device.type == "cpu" else "other"]
    block = max(k, ((block_size or budget // per_token) // k) * k)
    state = u.new_zeros(batch, dim, n_state, dtype=dtype)
    ys = []
    for s in range(0, length + pad, block):
        piece = slice(s, s + block)
        y, state = _scan_block(
            dt[..., piece], x[..., piece], A_c, B_c[..., piece], C_c[..., piece], state, k
        )
        ys.append(y)
    y = torch.cat(ys, dim=-1)[..., :length]
    out = _finish(y, u, D, z, dtype)
    return (out, state) if return_last_state else out


def _scan_block(dt, x, A, B, C, state, k):
    """One block of whole chunks: outputs [B, D, block] and the state after the block."""
    batch, dim, length = dt.shape
    n_state = A.shape[1]
    n_chunks = length // k
    # exp(A * S) with S the running sum of delta since each chunk's first step, [B, D, N, c, k].
    # Measuring from the first step (not before it) keeps a 1-step chunk free of exp(+big).
    A5 = A.view(1, dim, n_state, 1, 1)
    running = dt.view(batch, dim, 1, n_chunks, k).cumsum(-1)
    exponent = A5 * (running - running[..., :1])
    decay = torch.exp(exponent)
    first_decay = torch.exp(A5[..., 0] * dt.view(batch, dim, 1, n_chunks, k)[..., 0])
    drive = x.view(batch, dim, 1, n_chunks, k) * B.view(*B.shape[:3], n_chunks, k)
    # exp(-A S) is bounded by the chunk length, so no overflow. Not drive / decay: its
    # gradient divides by decay**2, which underflows to 0 (inf, then NaN) for long chunks.
    local = torch.cumsum(drive * torch.exp(-exponent), dim=-1)

    # Hand the state from chunk to chunk: start[c+1] = decay_over_c * start[c] + end_of_c.
    chunk_decay = decay[..., -1] * first_decay
    chunk_end = decay[..., -1] * local[..., -1]
    starts = []
    for c in range(n_chunks):
        starts.append(state)
        state = chunk_decay[..., c] * state + chunk_end[..., c]
    carried = first_decay * torch.stack(starts, dim=-1)
    states = decay * (local + carried.unsqueeze(-1))
    y = (states * C.view(*C.shape[:3], n_chunks, k)).sum(2)
    return y.reshape(batch, dim, length), state


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The recurrence one step at a time (slow; the definition the fast paths are tested on)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u)
    dt, A_c, B_c, C_c = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, dtype)
    batch, dim, length = u.shape
    u_c = u.to(dtype)
    state = u.new_zeros(batch, dim, A.shape[1], dtype=dtype)
    ys = []
    for t in range(length):
        step = dt[:, :, t, None]
        state = torch.exp(step * A_c) * state + step * u_c[:, :, t, None] * B_c[..., t]
        ys.append((state * C_c[..., t]).sum(-1))
    out = _finish(torch.stack(ys, dim=-1), u, D, z, dtype)
    return (out, state) if return_last_state else out


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus, dtype):
    """delta after bias/softplus [B, D, L]; A [D, N]; B, C broadcastable to [B, D, N, L]."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    _, dim, length = u.shape
    return dt, A.to(dtype), _per_channel(B, dim, length, dtype), _per_channel(C, dim, length, dtype)


def _per_channel(M: torch.Tensor, dim: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    M = M.to(dtype)
    if M.dim() == 2:  # [D, N]: the same at every step
        return M[None, :, :, None].expand(-1, -1, -1, length)
    if M.dim() == 3:  # [B, N, L]: shared by all channels
        return M[:, None]
    groups = M.shape[1]  # [B, G, N, L]: channel d uses group d // (D / G)
    return M.repeat_interleave(dim // groups, dim=1)


def _finish(y, u, D, z, dtype) -> torch.Tensor:
    if D is not None:
        y = y + D.to(dtype)[:, None] * u.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


def _safe_chunk_length(dt: torch.Tensor, A: torch.Tensor, limit: int, bound: float) -> int:
    """Longest chunk (halving from `limit`) whose worst |A| * sum|delta| stays under bound."""
    length = dt.shape[-1]
    k = max(1, min(limit, length))
    with torch.no_grad():
        worst_rate = A.detach().abs().amax(dim=1).double()  # [D]
        running = F.pad(dt.detach().abs().double().cumsum(-1), (1, 0))  # [B, D, L + 1]
        while k > 1:
            # Exponents inside a chunk span the steps after its first one.
            ends = torch.arange(k, length + k, k, device=dt.device).clamp(max=length)
            firsts = torch.arange(1, length + 1, k, device=dt.device)
            sums = running[..., ends] - running[..., firsts]  # [B, D, chunks]
            if not bool(torch.isfinite(sums).all()):
                raise ValueError("delta contains NaN or infinite values")
            worst = (sums * worst_rate[:, None]).amax().item()
            if worst <= bound:
                break
            k = (k + 1) // 2
    return k


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, channels, length], got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} must equal u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be [{dim}, d_state], got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    n_state = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (
            (M.dim() == 2 and M.shape == (dim, n_state))
            or (M.dim() == 3 and M.shape == (batch, n_state, length))
            or (
                M.dim() == 4
                and M.shape[0] == batch
                and M.shape[2:] == (n_state, length)
                and M.shape[1] > 0
                and dim % M.shape[1] == 0
            )
        )
        if not ok:
            raise ValueError(
                f"{name} must be [{dim}, {n_state}], [{batch}, {n_state}, {length}] or "
                f"[{batch}, groups, {n_state}, {length}], got shape {tuple(M.shape)}"
            )
    if D is not None and D.shape != (dim,):
        raise ValueError(f"D must be [{dim}], got shape {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"delta_bias must be [{dim}], got shape {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z shape {tuple(z.shape)} must equal u shape {tuple(u.shape)}")
