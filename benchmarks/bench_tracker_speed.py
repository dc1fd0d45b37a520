"""Tracker speed side by side: surgray (`recent`, `prune`) against Meta's SAM2VideoPredictor
and transformers' Sam2VideoModel (issue 9, item 1).

Same configuration (default Hiera-T at 512), same random weights (ours, copied into both
references; converted to transformers' key names by `hf_sam2`), same frames (a synthetic
surgical clip at 512x512) and the same box prompts on frame 0, with 1 and with 3 objects.

Timing is paired: one process holds every implementation and steps them frame by frame in
lockstep, rotating which goes first, so a change in the shared machine's load hits all of
them within the same second (separate runs a minute apart differed by up to 4x here). A
round is one such process per object count; figures are the median over rounds of each
round's median (or p90) over frames 8..N, and the ratio is the median over rounds of the
median per-frame ratio to the reference. Peak memory comes from one separate process per
implementation (a shared process cannot tell whose memory is whose). Before any ratio is
read, every implementation's masks are compared with the reference's on every frame and
object, in every run: `identical` means every mask agrees on >= 99.9% of its pixels.
`prune` is SurgSAM2's policy, a different memory by design, so its agreement is
informational.

    .venv/bin/python benchmarks/bench_tracker_speed.py                # full (about 1 h idle)
    .venv/bin/python benchmarks/bench_tracker_speed.py --quick        # micro config, seconds
    .venv/bin/python benchmarks/bench_tracker_speed.py --objects 3 --impls surgray-recent,sam2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TIMED_FROM,
    add_repo_paths,
    bench_config,
    current_rss,
    default_weight_seed,
    fmt,
    fmt_mb,
    frame_stats,
    machine_line,
    median_or_none,
    peak_rss,
    pin_threads,
    print_table,
    reset_peak_rss,
    run_worker,
)

add_repo_paths()
SCRIPT = Path(__file__).resolve()
REFERENCE = "sam2"


# ------------------------------------------------------------------ workers
def load_workload(folder: Path, objects: int):
    import torch
    from runners import Workload

    from surgray.model.sam2.config import ModelConfig

    cfg = ModelConfig.model_validate_json((folder / "config.json").read_text())
    data = np.load(folder / f"clip_{objects}.npz")
    state = torch.load(folder / "weights.pt", weights_only=True)
    return Workload(cfg, state, data["frames"], data["boxes"].tolist())


def paired_worker(args: argparse.Namespace) -> None:
    """Every implementation in one process, stepped in lockstep: per-frame times of each, and
    each one's outputs checked against the reference's on the same frame."""
    from runners import OutputCheck, build_runner

    work = load_workload(Path(args.workdir), args.objects)
    impls = args.impls.split(",")
    streams = {impl: iter(build_runner(impl, work).frames()) for impl in impls}
    gc.collect()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    checks = {impl: OutputCheck() for impl in impls if impl != REFERENCE}
    for t in range(work.num_frames):
        shift = t % len(impls)
        outputs = {}
        for impl in impls[shift:] + impls[:shift]:
            start = time.perf_counter()
            outputs[impl] = next(streams[impl])
            times[impl].append(time.perf_counter() - start)
        if REFERENCE in outputs:
            for impl, check in checks.items():
                check.update(outputs[impl], outputs[REFERENCE])
    result = {"times": times, "checks": {k: {**vars(v)} for k, v in checks.items()}}
    Path(args.result).write_text(json.dumps(result))


def memory_worker(args: argparse.Namespace) -> None:
    """One implementation alone: peak resident memory while tracking."""
    from runners import build_runner

    work = load_workload(Path(args.workdir), args.objects)
    runner = build_runner(args.worker, work)
    gc.collect()
    rss_before = current_rss()
    reset_ok = reset_peak_rss()
    for _ in runner.frames():
        pass
    result = {"rss_before": rss_before, "peak_rss": peak_rss() if reset_ok else None}
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ parent
def prepare(folder: Path, cfg, num_frames: int, object_counts: list[int], seed: int) -> None:
    import torch
    from runners import random_weights, synthetic_workload

    (folder / "config.json").write_text(cfg.model_dump_json())
    torch.save(random_weights(cfg, seed), folder / "weights.pt")
    for count in object_counts:
        frames, boxes = synthetic_workload(cfg, num_frames, count, seed=0)
        np.savez(folder / f"clip_{count}.npz", frames=frames, boxes=np.asarray(boxes))


def paired_ratio(times: list[float], reference: list[float]) -> float:
    ratios = [a / b for a, b in zip(times[TIMED_FROM:], reference[TIMED_FROM:])]
    return statistics.median(ratios)


def agreement_cell(checks: list[dict]) -> str | None:
    """Worst agreement with the reference over the rounds."""
    from runners import OutputCheck

    if not checks:
        return None
    merged = [OutputCheck(**c) for c in checks]
    low = min(c.min_pixel_agreement for c in merged)
    verdict = "identical" if all(c.identical() for c in merged) else "DIFFERENT"
    return (
        f"{verdict}: pixels >= {low:.2%}, IoU >= {min(c.min_iou for c in merged):.3f}, "
        f"max logit diff {max(c.max_logit_diff for c in merged):.1e} "
        f"(ref. masks cover {statistics.mean(c.mean_coverage for c in merged):.0%})"
    )


def summarize(paired: dict, alone: dict, impls: list[str], counts: list[int]):
    rows = []
    for count in counts:
        rounds = paired.get(count, [])
        for impl in impls:
            per_round = [frame_stats(r["times"][impl]) for r in rounds]
            ratio = None
            if impl != REFERENCE and REFERENCE in impls and rounds:
                value = statistics.median(
                    paired_ratio(r["times"][impl], r["times"][REFERENCE]) for r in rounds
                )
                ratio = f"{value:.2f}x"
            elif impl == REFERENCE:
                ratio = "1.00x"
            memory = alone.get((count, impl))
            peak = memory["peak_rss"] if memory else None
            growth = peak - memory["rss_before"] if peak else None
            agreement = "reference" if impl == REFERENCE else None
            if impl != REFERENCE and REFERENCE in impls:
                agreement = agreement_cell([r["checks"][impl] for r in rounds])
            median = median_or_none([s.median_s for s in per_round])
            p90 = median_or_none([s.p90_s for s in per_round])
            rows.append(
                [
                    str(count),
                    impl,
                    fmt(None if median is None else median * 1000, digits=0),
                    fmt(None if p90 is None else p90 * 1000, digits=0),
                    ratio,
                    fmt_mb(peak),
                    fmt_mb(growth),
                    agreement,
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--objects", default="1,3")
    parser.add_argument("--impls", default="surgray-recent,surgray-prune,sam2,transformers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, help="weights seed (default: per variant)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--quick", action="store_true", help="micro config, 12 frames, 1 object, 1 round"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import torch

        pin_threads(args.threads)
        torch.set_grad_enabled(False)
        args.objects = int(args.objects)
        (paired_worker if args.worker == "paired" else memory_worker)(args)
        return 0
    if args.quick:
        args.variant, args.image_size, args.frames, args.rounds = "micro", 128, 12, 1
        args.objects = "1"
    if args.frames <= TIMED_FROM:
        parser.error(
            f"--frames must exceed {TIMED_FROM} (frames 0..{TIMED_FROM - 1} are not timed)"
        )
    counts = [int(c) for c in args.objects.split(",")]
    impls = args.impls.split(",")
    cfg = bench_config(args.variant, args.image_size)
    seed = default_weight_seed(args.variant) if args.seed is None else args.seed
    started = machine_line(args.threads)
    paired: dict[int, list[dict]] = {}
    alone: dict[tuple[int, str], dict] = {}

    def launch(worker: str, count: int, out: Path) -> dict:
        return run_worker(
            SCRIPT,
            ["--worker", worker, "--objects", str(count), "--impls", ",".join(impls),
             "--workdir", str(folder), "--result", str(out), "--threads", str(args.threads)],
            args.threads,
            args.timeout,
        )  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        folder = Path(tmp)
        prepare(folder, cfg, args.frames, counts, seed)
        for rnd in range(args.rounds):
            for count in counts:
                out = folder / f"paired_{count}_{rnd}.json"
                result = launch("paired", count, out)
                paired.setdefault(count, []).append(result)
                medians = ", ".join(
                    f"{impl} {frame_stats(result['times'][impl]).median_s * 1000:.0f}"
                    for impl in impls
                )
                print(f"round {rnd + 1}/{args.rounds}, {count} object(s): ms/frame {medians} "
                      f"({result['wall_s']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        for count in counts:
            for impl in impls:
                out = folder / f"alone_{count}_{impl}.json"
                result = launch(impl, count, out)
                alone[(count, impl)] = result
                print(f"memory, {count} object(s), {impl}: peak "
                      f"{result['peak_rss'] / 2**20:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
        rows = summarize(paired, alone, impls, counts)
        if args.json:
            raw = {"paired": paired, "alone": {f"{c}:{i}": v for (c, i), v in alone.items()}}
            Path(args.json).write_text(json.dumps(raw, indent=1))
    title = (
        f"Tracker speed: {cfg.name} at {cfg.image_size}px, {args.frames} frames "
        f"(timed {TIMED_FROM}..{args.frames - 1}), weights seed {seed}, "
        f"median of {args.rounds} paired round(s)"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {started}; load average at the end {load}")
    print_table(
        title,
        ["objects", "implementation", "median ms/frame", "p90 ms/frame", "vs sam2 (paired)",
         "peak RSS MB (alone)", "RSS growth while tracking MB", "masks vs sam2"],
        rows,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
