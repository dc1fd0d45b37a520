"""Cost of handing out the SAM2 parts per call, against one tracking step in the same run.

`SAM2Model.sam_heads`, `.memory_readout`, `.memory_writer` and `.pointer_head` build a small
dataclass over the model's own modules and tensors on every access (so a part never holds a
stale tensor). One `track_frame` takes `memory_readout` and `sam_heads` once each and
`memory_writer` once (each of the first two also builds a `pointer_head`). The table gives the
microseconds per access and that cost as a share of one `track_frame` of the same network
(B objects, each with a full memory bank of `num_maskmem` frames), medians of interleaved rounds.

    .venv/bin/python benchmarks/bench_model_parts.py [--variant micro] [--size 128] [--objects 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from surgray.model.checkpoints.variants import get_variant
from surgray.model.sam2.memory_types import (
    MemoryEntry,
    MemorySelection,
    PointerMemory,
    SpatialMemory,
)
from surgray.model.sam2.network import SAM2Model

PARTS = ("pointer_head", "sam_heads", "memory_readout", "memory_writer")


def _seconds(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def _selection(model: SAM2Model, entry: MemoryEntry) -> MemorySelection:
    """A full bank: the same frame's memory in every temporal slot, and its pointer."""
    count = model.cfg.memory.num_maskmem
    spatial = [SpatialMemory(entry, temporal_index=i) for i in range(count)]
    return MemorySelection(spatial=spatial, pointers=[PointerMemory(entry, 1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="micro")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SAM2Model(get_variant(args.variant, image_size=args.size)).eval()
    with torch.no_grad():
        features = model.encode_frames(torch.rand(1, 3, args.size, args.size))[0]
        first = model.track_frame(features, [None] * args.objects, 0)
        entries = first.entries()
        selections = [_selection(model, e) for e in entries]

        def step() -> None:
            model.track_frame(features, selections, 1)

        step()  # warm-up
        rows: dict[str, list[float]] = {name: [] for name in (*PARTS, "track_frame")}
        for _ in range(args.rounds):
            rows["track_frame"].append(_seconds(step, 5))
            for name in PARTS:
                rows[name].append(_seconds(lambda n=name: getattr(model, n), 2000))
    frame = statistics.median(rows["track_frame"])
    print(f"{args.variant} at {args.size} px, {args.objects} objects, {args.threads} thread(s)")
    print(f"{'what':<16} {'us':>10} {'share of track_frame':>22}")
    for name in PARTS:
        cost = statistics.median(rows[name])
        print(f"{name:<16} {cost * 1e6:>10.1f} {cost / frame:>21.2%}")
    per_step = sum(statistics.median(rows[n]) for n in ("sam_heads", "memory_readout"))
    per_step += statistics.median(rows["memory_writer"])
    print(f"{'per track_frame':<16} {per_step * 1e6:>10.1f} {per_step / frame:>21.2%}")
    print(f"{'track_frame':<16} {frame * 1e6:>10.1f} {1:>21.2%}")


if __name__ == "__main__":
    main()
