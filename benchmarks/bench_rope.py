"""RoPE of one memory-attention cross-attention layer: surgray's kernel against the reference's.

The workload is what one layer rotates per tracked frame on Hiera-T/S@512 with 3 objects:
queries [1, 1, 1024, 256] (one frame, shared by the objects) and keys [3, 1, 7232, 256]
(7 memory maps of 32x32 tokens, then 64 object-pointer tokens left unrotated). Sides:

- `surgray`: `AxialRotaryEmbedding.rotate` (complex product written into one buffer).
- `surgray, in place`: the same with `inplace=True`, as `RoPEAttention` calls it at inference
  (rotated repeatedly here: a rotation keeps the values' size, so the timing is unaffected).
- `surgray, previous kernel`: the strided real-form kernel it replaced (kept here only to
  measure against; same bits).
- `surgray, real form`: `AxialRotaryEmbedding.rotate_real`, the general path (other dtypes).
- `reference`: `sam2.modeling.position_encoding.apply_rotary_enc` with `repeat_freqs_k`, then
  the pointer tokens concatenated back, as its `RoPEAttention` does.

The sides run interleaved, call by call, for `--rounds` rounds; the table shows the median ms
per layer (queries + keys) and each side's time over the reference's. Outputs are compared.

    .venv/bin/python benchmarks/bench_rope.py            # ~30 s on 2 cores
    .venv/bin/python benchmarks/bench_rope.py --quick    # seconds (CI)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep rather than spin (see common.child_env); before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_repo_paths,
    kernel_bench_args,
    machine_line,
    median_ms,
    print_table,
)

add_repo_paths()

import torch  # noqa: E402


def previous_kernel(x, cos, sin, repeat, num_rot):
    """The strided real-form kernel surgray used before the complex one (for measurement)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if num_rot < x.shape[-2]:
        out[..., num_rot:, :] = x[..., num_rot:, :]
    source, target = x[..., :num_rot, :], out[..., :num_rot, :]
    if repeat > 1:
        source = source.unflatten(-2, (repeat, num_rot // repeat))
        target = target.unflatten(-2, (repeat, num_rot // repeat))
    even, odd = source[..., 0::2], source[..., 1::2]
    first, second = target[..., 0::2], target[..., 1::2]
    scratch = torch.empty(first.shape, dtype=x.dtype, device=x.device)
    torch.mul(even, cos, out=first)
    first.sub_(torch.mul(odd, sin, out=scratch))
    torch.mul(even, sin, out=second)
    second.add_(torch.mul(odd, cos, out=scratch))
    return out


def main() -> None:
    args = kernel_bench_args(__doc__.splitlines()[0])

    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    from surgray.model.sam2.rope import AxialRotaryEmbedding

    side, objects, maps, pointers, dim = (8, 3, 7, 16, 64) if args.quick else (32, 3, 7, 64, 256)
    rounds = args.rounds or (3 if args.quick else 30)
    tokens = side * side
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, tokens, dim, generator=gen)
    k = torch.randn(objects, 1, maps * tokens + pointers, dim, generator=gen)
    rope = AxialRotaryEmbedding(dim)
    cos, sin = rope.tables(side, side, "cpu")
    cis = compute_axial_cis(dim=dim, end_x=side, end_y=side, theta=10000.0)
    num_rot = maps * tokens

    def ours():
        return rope.rotate(q, side, side), rope.rotate(
            k, side, side, repeat=maps, num_exclude=pointers
        )

    owned_q, owned_k = q.clone(), k.clone()

    def ours_inplace():  # as RoPEAttention at inference: the projections' outputs are its own
        return rope.rotate(owned_q, side, side, inplace=True), rope.rotate(
            owned_k, side, side, repeat=maps, num_exclude=pointers, inplace=True
        )

    def previous():
        return previous_kernel(q, cos, sin, 1, tokens), previous_kernel(k, cos, sin, maps, num_rot)

    def real_form():
        return rope.rotate_real(q, side, side, 1, tokens), rope.rotate_real(
            k, side, side, maps, num_rot
        )

    def reference():
        rq, rk = apply_rotary_enc(q, k[:, :, :num_rot], freqs_cis=cis, repeat_freqs_k=True)
        return rq, torch.cat([rk, k[:, :, num_rot:]], dim=-2)

    sides = {
        "surgray": ours,
        "surgray, in place (inference)": ours_inplace,
        "surgray, previous kernel": previous,
        "surgray, real form": real_form,
        "reference (sam2)": reference,
    }
    with torch.inference_mode():
        expected = reference()
        diffs = {}
        for name, fn in sides.items():
            got = fn()
            diffs[name] = max((a - b).abs().max().item() for a, b in zip(got, expected))
        medians = median_ms(sides, rounds)
    ref_ms = medians["reference (sam2)"]
    rows = []
    for name in sides:
        ms = medians[name]
        rows.append([name, f"{ms:.2f}", f"{ms / ref_ms:.2f}", f"{diffs[name]:.1e}"])
    print(machine_line(args.threads))
    print(
        f"queries [1, 1, {tokens}, {dim}], keys [{objects}, 1, {maps * tokens + pointers}, {dim}] "
        f"({maps} maps of {side}x{side}, {pointers} pointer tokens); median of {rounds} rounds"
    )
    print_table(
        "RoPE of one cross-attention layer (queries + keys)",
        ["side", "ms per layer", "time / reference", "max |diff| vs reference"],
        rows,
    )


if __name__ == "__main__":
    main()
