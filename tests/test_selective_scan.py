"""The chunked selective scan against the literal recurrence and against mambapy's pscan."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from surgray.model.referring.selective_scan import (
    fused_kernel_available,
    selective_scan,
    selective_scan_reference,
)


def _inputs(batch=2, dim=6, n_state=4, length=37, dtype=torch.float64, seed=0, b_layout="var"):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = rnd(batch, dim, length)
    delta = rnd(batch, dim, length) * 0.5
    A = -torch.rand(dim, n_state, generator=g, dtype=dtype) * 4 - 0.1
    if b_layout == "var":
        B, C = rnd(batch, n_state, length), rnd(batch, n_state, length)
    elif b_layout == "fixed":
        B, C = rnd(dim, n_state), rnd(dim, n_state)
    else:  # two groups of dim / 2 channels
        B, C = rnd(batch, 2, n_state, length), rnd(batch, 2, n_state, length)
    return dict(
        u=u, delta=delta, A=A, B=B, C=C, D=rnd(dim), z=rnd(batch, dim, length), bias=rnd(dim)
    )


OPTIONS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, softplus


@pytest.mark.parametrize("length", [1, 5, 31, 32, 33, 100])
@pytest.mark.parametrize("use_d,use_z,use_bias,softplus", OPTIONS)
def test_chunked_equals_recurrence_float64(length, use_d, use_z, use_bias, softplus):
    x = _inputs(length=length, seed=length)
    delta = x["delta"] if softplus else x["delta"].abs()  # keep the system stable without softplus
    kwargs = dict(
        D=x["D"] if use_d else None,
        z=x["z"] if use_z else None,
        delta_bias=x["bias"].abs() if use_bias else None,
        delta_softplus=softplus,
        return_last_state=True,
    )
    y, last = selective_scan(x["u"], delta, x["A"], x["B"], x["C"], chunk_size=8, **kwargs)
    y_ref, last_ref = selective_scan_reference(x["u"], delta, x["A"], x["B"], x["C"], **kwargs)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block_size", [1, 8, 30])
def test_several_blocks_carry_the_state(block_size):
    x = _inputs(length=61, seed=17)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["bias"], True, True)
    y, last = selective_scan(*args, chunk_size=4, block_size=block_size)
    y_ref, last_ref = selective_scan_reference(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [7, 64, 129])
@pytest.mark.parametrize("chunk_size", [1, 16, 32, 64])
def test_chunked_equals_recurrence_float32(length, chunk_size):
    x = _inputs(length=length, dtype=torch.float32, seed=3)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["bias"], True)
    y = selective_scan(*args, chunk_size=chunk_size)
    y_ref = selective_scan_reference(*args)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["fixed", "grouped"])
def test_time_invariant_and_grouped_b_c(layout):
    x = _inputs(length=21, b_layout=layout)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, None, True)
    torch.testing.assert_close(
        selective_scan(*args, chunk_size=4), selective_scan_reference(*args), rtol=1e-10, atol=1e-10
    )


def test_grouped_b_is_per_group():
    """With groups, channels 0..2 must use group 0 and channels 3..5 group 1 (checked by hand)."""
    x = _inputs(length=9, b_layout="grouped")
    per_channel_B = x["B"].repeat_interleave(3, dim=1)  # [B, D, N, L]
    per_channel_C = x["C"].repeat_interleave(3, dim=1)
    for d in (0, 4):
        y_d = selective_scan_reference(
            x["u"][:, d : d + 1],
            x["delta"][:, d : d + 1],
            x["A"][d : d + 1],
            per_channel_B[:, d],
            per_channel_C[:, d],
            delta_softplus=True,
        )
        y = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
        torch.testing.assert_close(y[:, d : d + 1], y_d, rtol=1e-10, atol=1e-10)


def test_stiff_decay_stays_finite_and_exact():
    """|A| * delta far beyond exp's float32 range: the chunk guard must shrink the chunks."""
    x = _inputs(length=80, dtype=torch.float32, seed=5)
    A = -torch.linspace(1.0, 200.0, 6 * 4).reshape(6, 4)
    delta = x["delta"].abs() * 10 + 1.0  # up to ~|A| * delta = 200 * 20 per step
    y = selective_scan(x["u"], delta, A, x["B"], x["C"], x["D"], chunk_size=64)
    y_ref = selective_scan_reference(x["u"], delta, A, x["B"], x["C"], x["D"])
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)


def test_gradients_match_recurrence():
    x = _inputs(length=23, seed=7)
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}

    def run(fn):
        for t in leaves.values():
            t.grad = None
        L = leaves
        y = fn(L["u"], L["delta"], L["A"], L["B"], L["C"], L["D"], L["z"], L["bias"], True)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return {k: t.grad.clone() for k, t in leaves.items()}

    ours = run(lambda *a: selective_scan(*a, chunk_size=4))
    ref = run(selective_scan_reference)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-9, atol=1e-9, msg=k)


def test_bfloat16_inputs_compute_in_float32():
    x = _inputs(length=40, dtype=torch.float32, seed=11)
    args32 = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["bias"])
    args16 = tuple(a.to(torch.bfloat16) if a.dim() == 3 else a for a in args32)
    y16 = selective_scan(*args16, delta_softplus=True)
    assert y16.dtype == torch.bfloat16
    y_ref = selective_scan_reference(*(a.float() for a in args16), delta_softplus=True)
    torch.testing.assert_close(y16.float(), y_ref, rtol=2e-2, atol=2e-2)


def test_equals_mambapy_pscan():
    from mambapy.mamba import MambaBlock, MambaConfig

    block = MambaBlock(MambaConfig(d_model=8, n_layers=1, d_state=4, expand_factor=1))
    x = _inputs(batch=2, dim=8, n_state=4, length=50, dtype=torch.float32, seed=13)
    delta = F.softplus(x["delta"])
    # mambapy's layout is [B, L, D] / [B, L, N]; its delta is already softplus'd.
    y_mp = block.selective_scan(
        x["u"].transpose(1, 2),
        delta.transpose(1, 2),
        x["A"],
        x["B"].transpose(1, 2),
        x["C"].transpose(1, 2),
        x["D"],
    ).transpose(1, 2)
    y = selective_scan(x["u"], delta, x["A"], x["B"], x["C"], x["D"])
    torch.testing.assert_close(y, y_mp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=torch.zeros(2, 6)), "u must be"),
        (dict(delta=torch.zeros(2, 6, 5)), "delta shape"),
        (dict(A=torch.zeros(5, 4)), "A must be"),
        (dict(B=torch.zeros(2, 3, 37)), "B must be"),
        (dict(C=torch.zeros(2, 4, 36)), "C must be"),
        (dict(D=torch.zeros(5)), "D must be"),
        (dict(z=torch.zeros(2, 6, 36)), "z shape"),
        (dict(bias=torch.zeros(7)), "delta_bias must be"),
    ],
)
def test_bad_shapes_are_named(change, message):
    x = _inputs(dtype=torch.float32)
    x.update({k: v.float() for k, v in change.items()})
    with pytest.raises(ValueError, match=message):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["bias"])


def test_nan_delta_is_rejected():
    x = _inputs(dtype=torch.float32)
    x["delta"][0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])


@pytest.mark.skipif(fused_kernel_available(), reason="mamba_ssm is importable here")
def test_cuda_backend_without_mamba_ssm_is_a_clear_error():
    x = _inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="cuda")
