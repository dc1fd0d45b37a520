"""Where a tracked frame's time goes: the profile behind benchmarks/README.md section 1.

Three views of the same workload (SAM2.1 Hiera-T at 512 px, random weights, box prompts on
frame 0; surgray's `recent` tracker and Meta's `SAM2VideoPredictor`, both with 2 threads):

1. FLOPs per frame (torch's `FlopCounterMode`), whole frame and the Hiera trunk, per side.
   CPU attention kernels are not counted by the FLOP counter (the table says so).
2. Operator shares of surgray's frame time (`torch.profiler`, self CPU time grouped into matrix
   products, fused attention, copies and the rest).
3. Component timers, both trackers stepped in lockstep, ms per frame: image encoder (trunk and
   neck), memory attention, mask decoder, memory encoder, whole step.

Every figure is measured from frame `TIMED_FROM` on, once the memory bank is full.

    .venv/bin/python benchmarks/profile_tracker.py              # Hiera-T@512, ~5 min on 2 cores
    .venv/bin/python benchmarks/profile_tracker.py --quick      # micro@128, seconds (CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

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

# Components timed in both networks, by attribute path (the state-dict layout both share).
COMPONENTS = {
    "image encoder trunk": "image_encoder.trunk",
    "image encoder neck": "image_encoder.neck",
    "memory attention": "memory_attention",
    "mask decoder": "sam_mask_decoder",
    "memory encoder": "memory_encoder",
}

# Operator groups of the profile, by aten name (self CPU time).
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul")
ATTENTION_MARK = "scaled_dot_product"
COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::to")


def op_group(name: str) -> str:
    if name in MATMUL_OPS:
        return "matrix products"
    if ATTENTION_MARK in name:
        return "fused attention"
    if name in COPY_OPS:
        return "copies"
    if name.startswith("aten::convolution") or name.startswith("aten::mkldnn_convolution"):
        return "convolutions"
    return "everything else"


def build_sides(args: argparse.Namespace) -> dict[str, object]:
    from runners import MetaRunner, SurgrayRunner, Workload, random_weights, synthetic_workload

    cfg = bench_config(args.variant, args.image_size)
    clip, boxes = synthetic_workload(cfg, args.frames, args.objects, seed=0)
    state = random_weights(cfg, default_weight_seed(args.variant))
    work = Workload(cfg=cfg, state=state, clip=clip, boxes=boxes)
    return {"surgray": SurgrayRunner(work, policy="recent"), "sam2": MetaRunner(work)}


def network_of(name: str, runner: object):
    return runner.tracker.model if name == "surgray" else runner.predictor


def submodule(network, path: str):
    for part in path.split("."):
        network = getattr(network, part)
    return network


class ComponentTimer:
    """Wall time spent inside chosen submodules' forward calls, summed per component."""

    def __init__(self, network, components: dict[str, str]) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._starts: dict[str, float] = {}
        for label, path in components.items():
            module = submodule(network, path)
            module.register_forward_pre_hook(self._pre(label))
            module.register_forward_hook(self._post(label))

    def _pre(self, label: str) -> Callable:
        def hook(*_):
            self._starts[label] = time.perf_counter()

        return hook

    def _post(self, label: str) -> Callable:
        def hook(*_):
            self.totals[label] += time.perf_counter() - self._starts.pop(label)

        return hook

    def reset(self) -> None:
        self.totals.clear()


def advance(frames: Iterator, count: int) -> None:
    for _ in range(count):
        next(frames)


def gflop(flops: float) -> str:
    return f"{flops / 1e9:.1f}" if flops >= 1e10 else f"{flops / 1e9:.3f}"


def flop_counts(args: argparse.Namespace) -> list[list[str]]:
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name, runner in build_sides(args).items():
        frames = iter(runner.frames())
        advance(frames, TIMED_FROM)
        counter = FlopCounterMode(display=False)
        with counter:
            next(frames)
        by_module = counter.get_flop_counts()  # keyed by module class path: both say ImageEncoder
        trunk = sum(
            sum(ops.values())
            for mod, ops in by_module.items()
            if mod.endswith("ImageEncoder.trunk")
        )
        rows.append([name, gflop(counter.get_total_flops()), gflop(trunk), "not counted"])
    return rows


def operator_shares(args: argparse.Namespace) -> list[list[str]]:
    from torch.profiler import ProfilerActivity, profile

    runner = build_sides(args)["surgray"]
    frames = iter(runner.frames())
    advance(frames, TIMED_FROM)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        advance(frames, args.profiled_frames)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        groups[op_group(event.key)] += event.self_cpu_time_total
    total = sum(groups.values()) or 1.0
    return [
        [group, f"{100 * us / total:.0f}%", f"{us / 1e3 / args.profiled_frames:.0f}"]
        for group, us in sorted(groups.items(), key=lambda kv: -kv[1])
    ]


def component_times(args: argparse.Namespace) -> list[list[str]]:
    sides = build_sides(args)
    timers = {n: ComponentTimer(network_of(n, r), COMPONENTS) for n, r in sides.items()}
    streams = {n: iter(r.frames()) for n, r in sides.items()}
    steps: dict[str, float] = defaultdict(float)
    for frame in range(args.frames):
        if frame == TIMED_FROM:
            for timer in timers.values():
                timer.reset()
        order = list(streams.items())
        if frame % 2:  # who goes first alternates, so a change in the load hits both alike
            order.reverse()
        for name, stream in order:  # lockstep: both sides see the same load
            started = time.perf_counter()
            next(stream)
            if frame >= TIMED_FROM:
                steps[name] += time.perf_counter() - started
    timed = args.frames - TIMED_FROM
    labels = [*COMPONENTS, "whole step"]
    rows = []
    for label in labels:
        cells = []
        for name in sides:
            seconds = steps[name] if label == "whole step" else timers[name].totals[label]
            cells.append(f"{1e3 * seconds / timed:.0f}")
        rows.append([label, *cells])
    ratio = steps["surgray"] / steps["sam2"]
    rows[-1][1] += f" ({ratio:.2f}x)"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--frames", type=int, default=TIMED_FROM + 6, help="frames per video")
    parser.add_argument("--profiled-frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="micro network at 128 px (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.variant, args.image_size = "micro", 128
        args.frames, args.profiled_frames = TIMED_FROM + 2, 1
    if args.frames <= TIMED_FROM:
        parser.error(f"--frames must exceed {TIMED_FROM} (the memory bank fills first)")
    pin_threads(args.threads)
    print(machine_line(args.threads))
    print(
        f"{args.variant} at {args.image_size} px, {args.objects} object(s), "
        f"frames {TIMED_FROM}..{args.frames - 1} timed"
    )
    print_table(
        "FLOPs per frame (GFLOP, torch FlopCounterMode)",
        ["implementation", "whole frame", "Hiera trunk", "CPU attention kernels"],
        flop_counts(args),
    )
    print_table(
        f"surgray operator shares (torch.profiler, {args.profiled_frames} frame(s))",
        ["operator group", "share of self CPU time", "ms per frame"],
        operator_shares(args),
    )
    print_table(
        "Component timers, both trackers in lockstep (ms per frame)",
        ["component", "surgray", "sam2"],
        component_times(args),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
