"""What a frame of `precision: fast` still spends in float32: self time per network part and
module type, exact and fast trackers stepped in lockstep.

Workload: Hiera-T at 512 px, random weights of the reference scenario (seed 1), a synthetic
clip, `--objects` boxes on frame 0, 2 threads. Every module gets forward hooks; a module's
self time is its wall time minus its children's, so a `RoPEAttention`'s own time is its fused
attention kernel (SDPA) plus the rotation, and an `Int8Linear`'s is the int8 product. Rows are
(part of the network, module type), ms per frame over frames 8.., largest first.

    .venv/bin/python benchmarks/profile_fast_mode.py                 # ~3 min on 2 cores
    .venv/bin/python benchmarks/profile_fast_mode.py --quick         # micro@128 (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TIMED_FROM,
    add_repo_paths,
    bench_config,
    default_weight_seed,
    machine_line,
    pin_threads,
    print_table,
)

add_repo_paths()


class SelfTimer:
    """Self wall time per (top-level part, module type) of every module's forward."""

    def __init__(self, network) -> None:
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, children's time]
        self.active = False
        for name, module in network.named_modules():
            if not name:
                continue
            key = (".".join(name.split(".")[:2]), type(module).__name__)
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post(key))

    def _pre(self, *_):
        self._stack.append([time.perf_counter(), 0.0])

    def _post(self, key):
        def hook(*_):
            start, children = self._stack.pop()
            spent = time.perf_counter() - start
            if self._stack:
                self._stack[-1][1] += spent
            if self.active:
                self.totals[key] += spent - children

        return hook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--frames", type=int, default=TIMED_FROM + 4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="micro network at 128 px (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.variant, args.image_size, args.frames = "micro", 128, TIMED_FROM + 1
    pin_threads(args.threads)
    import torch
    from runners import Workload, random_weights, synthetic_workload

    from surgray.model.checkpoints.sam2_checkpoint import build_model
    from surgray.tracking.postprocess import PostprocessConfig
    from surgray.tracking.tracker import Tracker

    cfg = bench_config(args.variant, args.image_size)
    clip, boxes = synthetic_workload(cfg, args.frames, args.objects, seed=0)
    state = random_weights(cfg, default_weight_seed(args.variant))
    work = Workload(cfg=cfg, state=state, clip=clip, boxes=boxes)
    sides = {}
    for precision in ("fp32", "fast"):
        model = build_model(cfg)
        model.load_state_dict(state, strict=True)
        tracker = Tracker(
            model,
            {"name": "recent"},
            postprocess=PostprocessConfig(fill_hole_area=0),
            precision=precision,
        )
        video = tracker.start("bench", work.frame_size, num_frames=work.num_frames)
        for obj_id, box in enumerate(boxes, start=1):
            tracker.add_box(video, obj_id, 0, box)
        sides[precision] = (tracker, video, SelfTimer(tracker.model))
    steps: dict[str, float] = defaultdict(float)
    with torch.inference_mode():
        for index, frame in enumerate(work.frames()):
            for precision, (tracker, video, timer) in sides.items():
                timer.active = index >= TIMED_FROM
                started = time.perf_counter()
                tracker.step(video, frame)
                if index >= TIMED_FROM:
                    steps[precision] += time.perf_counter() - started
    timed = args.frames - TIMED_FROM
    print(machine_line(args.threads))
    print(
        f"{args.variant} at {args.image_size} px, {args.objects} object(s), "
        f"frames {TIMED_FROM}..{args.frames - 1} timed, exact and fast in lockstep"
    )
    keys = set()
    for _, _, timer in sides.values():
        keys |= set(timer.totals)
    fast_totals = sides["fast"][2].totals
    exact_totals = sides["fp32"][2].totals
    ranked = sorted(keys, key=lambda k: -fast_totals.get(k, 0.0))[: args.top]
    rows = [
        [
            part,
            kind,
            f"{1e3 * exact_totals.get((part, kind), 0.0) / timed:.0f}",
            f"{1e3 * fast_totals.get((part, kind), 0.0) / timed:.0f}",
        ]
        for part, kind in ranked
    ]
    rows.append(
        [
            "whole step",
            "",
            f"{1e3 * steps['fp32'] / timed:.0f}",
            f"{1e3 * steps['fast'] / timed:.0f} ({steps['fp32'] / steps['fast']:.2f}x)",
        ]
    )
    print_table(
        "Self time per part and module type, ms per frame (largest in fast first)",
        ["part", "module type", "fp32", "fast"],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
