"""Fast mode's int8 attention against the fused float kernel, one attention call at a time.

Per row, one call of what the memory attention runs for 3 objects at a map of `side x side`
tokens (Hiera at image size 16 x side): the self-attention (queries = keys = the frame's
tokens, values of width 256) and the cross-attention (keys: 7 memory maps plus 64 pointer
tokens; values: the 64-channel memories, which the int8 path projects after the attention).
Sides, interleaved call by call for `--rounds` rounds:

- `fused float`: `scaled_dot_product_attention` on the projected values (width 256), which is
  what exact mode runs;
- `int8`: `surgray.model.int8_attention.int8_attention` on the path fast mode takes (for the
  cross-attention: the 64-channel memories; the small projection to 256 channels after it is
  not timed), its size threshold lifted so that every row runs the int8 path; the speed column
  says where that threshold (`takes_int8_path`) should sit.

The error column is the int8 output's relative L2 distance to float attention on the same
(unprojected) values. Random inputs, so it shows the kernel's arithmetic, not a network's
fidelity (bench_fast_mode.py measures that).

    .venv/bin/python benchmarks/bench_int8_attention.py           # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_int8_attention.py --quick   # seconds (CI)
"""

from __future__ import annotations

import functools
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
from torch.nn import functional as F  # noqa: E402

OBJECTS, MAPS, POINTERS, WIDTH, MEMORY_WIDTH = 3, 7, 64, 256, 64


def workloads(maps: list[int]):
    """(name, scores per object, q, k, v for the fused kernel, v for the int8 path)."""
    gen = torch.Generator().manual_seed(0)
    for side in maps:
        tokens = side * side
        q = torch.randn(1, 1, tokens, WIDTH, generator=gen)
        k = torch.randn(OBJECTS, 1, tokens, WIDTH, generator=gen)
        v = torch.randn(OBJECTS, 1, tokens, WIDTH, generator=gen)
        yield f"self {side}x{side}", tokens * tokens, q, k, v, v
        keys = MAPS * tokens + POINTERS
        k = torch.randn(OBJECTS, 1, keys, WIDTH, generator=gen)
        memories = torch.randn(OBJECTS, 1, keys, MEMORY_WIDTH, generator=gen)
        projected = torch.randn(OBJECTS, 1, keys, WIDTH, generator=gen)
        yield f"cross {side}x{side}", tokens * keys, q, k, projected, memories


def main() -> None:
    args = kernel_bench_args(__doc__.splitlines()[0])

    from surgray.model import int8_attention as kernel_module
    from surgray.tracking.precision import cpu_has_native_bf16

    values_dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    maps = [8, 12] if args.quick else [8, 12, 16, 24, 32]
    rounds = args.rounds or (3 if args.quick else 15)
    cases = list(workloads(maps))
    # Which path fast mode takes, with the shipped threshold; then every row on the int8 path,
    # to see where it pays off.
    in_fast_mode = [
        kernel_module.takes_int8_path(q.shape[-2], *values.shape[-2:])
        for *_, q, _, _, values in cases
    ]
    kernel_module.MIN_SCORES = 0
    rows = []
    with torch.inference_mode():
        for (name, scores, q, k, v, values), runs_int8 in zip(cases, in_fast_mode):
            expanded = q.expand(OBJECTS, -1, -1, -1)
            sides = {
                "fused": functools.partial(F.scaled_dot_product_attention, expanded, k, v),
                "int8": functools.partial(
                    kernel_module.int8_attention, q, k, values, values_dtype=values_dtype
                ),
            }
            exact = F.scaled_dot_product_attention(expanded, k, values)
            error = float((sides["int8"]() - exact).norm() / exact.norm())
            medians = median_ms(sides, rounds)
            fused_ms, int8_ms = medians["fused"], medians["int8"]
            rows.append(
                [
                    name,
                    f"{scores:,}",
                    f"{fused_ms:.2f}",
                    f"{int8_ms:.2f}",
                    f"{fused_ms / int8_ms:.2f}x",
                    "int8" if runs_int8 else "fused",
                    f"{error:.1e}",
                ]
            )
    print(machine_line(args.threads))
    print(
        f"{OBJECTS} objects, width {WIDTH}; cross-attention: {MAPS} memory maps + {POINTERS} "
        f"pointer tokens, int8 path on {MEMORY_WIDTH}-channel memories; products in "
        f"{str(values_dtype).removeprefix('torch.')}; median of {rounds} rounds"
    )
    print_table(
        "Memory attention, one call: fused float kernel against int8",
        [
            "attention",
            "scores per object",
            "fused float ms",
            "int8 ms",
            "speed vs fused",
            "fast mode runs",
            "int8 error (rel. L2)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
