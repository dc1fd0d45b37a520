"""Speed of the selective scan: the literal recurrence, our chunked scan, mambapy's pscan.

Size of one CSTMamba scan at 512 input: 3 frames of 32x32 tokens (L = 3072), d_inner 512,
d_state 16, batch 1. Inputs look like a freshly initialised Mamba's: softplus(delta) in about
[0.001, 0.1], A = -(1..16), and the scan is run as mambapy runs it (delta already softplus'd,
D skip, no z gate) so that all three do the same work. Runs are interleaved round by round and
the median is kept, so a change in machine load hits every row alike. The max |difference| to
the recurrence's output is printed as a check.

    .venv/bin/python benchmarks/bench_selective_scan.py [--threads 2] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch.nn import functional as F

from surgray.model.referring.selective_scan import (
    fused_kernel_available,
    selective_scan,
    selective_scan_reference,
)


def make_inputs(batch: int, dim: int, n_state: int, length: int, device: str):
    g = torch.Generator().manual_seed(0)
    log_dt = torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
    bias = log_dt.exp() + torch.log(-torch.expm1(-log_dt.exp()))  # inverse softplus
    raw = torch.randn(batch, dim, length, generator=g) * 0.1 + bias[:, None]
    tensors = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=F.softplus(raw),
        A=-torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, n_state, length, generator=g),
        C=torch.randn(batch, n_state, length, generator=g),
        D=torch.ones(dim),
    )
    return {k: v.to(device) for k, v in tensors.items()}


def mambapy_scan(x):
    from mambapy.mamba import MambaBlock

    # mambapy's layout is [B, L, D] / [B, L, N]; the transposes are part of using it.
    y = MambaBlock.selective_scan(
        None,
        x["u"].transpose(1, 2),
        x["delta"].transpose(1, 2),
        x["A"],
        x["B"].transpose(1, 2),
        x["C"].transpose(1, 2),
        x["D"],
    )
    return y.transpose(1, 2)


def implementations(device: str):
    impls = {
        "naive recurrence": lambda x: selective_scan_reference(**x),
        "surgray chunked": lambda x: selective_scan(**x, backend="chunked"),
        "mambapy pscan": mambapy_scan,
    }
    if device == "cuda" and fused_kernel_available():
        impls["mamba-ssm fused"] = lambda x: selective_scan(**x, backend="cuda")
    return impls


def timed(fn, x, backward: bool, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if backward:
        x = {
            k: v.detach().clone().requires_grad_(k in ("u", "delta", "B", "C"))
            for k, v in x.items()
        }
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    y = fn(x)
    if backward:
        y.square().mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--length", type=int, default=3 * 32 * 32)
    parser.add_argument("--d-inner", type=int, default=512)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--no-naive-backward", action="store_true", help="skip the slowest cell")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = make_inputs(args.batch, args.d_inner, args.d_state, args.length, args.device)
    impls = implementations(args.device)
    with torch.no_grad():
        reference = impls["naive recurrence"](x)
        errors = {name: (fn(x) - reference).abs().max().item() for name, fn in impls.items()}
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            for backward in (False, True):
                if backward and name == "naive recurrence" and args.no_naive_backward:
                    continue
                if not backward:
                    with torch.no_grad():
                        t = timed(fn, x, False, args.device)
                else:
                    t = timed(fn, x, True, args.device)
                times.setdefault((name, backward), []).append(t)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"selective scan, B={args.batch} D={args.d_inner} N={args.d_state} L={args.length}, "
        f"{args.device}, {args.threads} threads, median of {args.rounds} rounds "
        f"(1-min load average at the end: {load:.1f})"
    )
    print(
        "wall = elapsed ms; cpu = CPU ms of the process summed over its threads (less sensitive "
        "to other processes on a shared machine)"
    )
    header = [
        "implementation",
        "fwd wall",
        "fwd cpu",
        "fwd+bwd wall",
        "fwd+bwd cpu",
        "max|y-naive|",
    ]
    print(f"{header[0]:<18}" + "".join(f"{h:>14}" for h in header[1:]))
    for name in impls:
        cells = []
        for backward in (False, True):
            runs = times.get((name, backward))
            for i in (0, 1):
                if runs:
                    cells.append(f"{statistics.median(r[i] for r in runs) * 1e3:14.1f}")
                else:
                    cells.append(f"{'not measured':>14}")
        print(f"{name:<18}" + "".join(cells) + f"{errors[name]:14.2e}")


if __name__ == "__main__":
    main()
