"""Peak memory against video length (issue 9, item 2).

surgray streams a video through its tracker (`recent` and `prune` policies) for 500 to 5,000
frames; Meta's SAM2VideoPredictor (with `offload_video_to_cpu`, the documented way to save
memory) and transformers' streaming Sam2VideoModel run up to 2,000 frames. One object, box
prompt on frame 0, the micro network at 256 px by default (`--variant sam2.1_hiera_tiny` for
the real size). Frames come from a 64-frame synthetic clip played back and forth, so the
harness itself holds nothing that grows with the length; the reference is handed the whole
video as the normalised float32 tensor its `init_state` would build.

Each (implementation, length) is a fresh subprocess; the figure is its whole-process peak
resident memory (VmHWM). The slope is a least-squares fit of peak against length, in bytes
per frame; "flat" means the peak at the longest length is within 10% of the shortest.

    .venv/bin/python benchmarks/bench_memory_vs_length.py            # about 10 minutes idle
    .venv/bin/python benchmarks/bench_memory_vs_length.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MB,
    add_repo_paths,
    bench_config,
    default_weight_seed,
    fmt_mb,
    machine_line,
    peak_rss,
    pin_threads,
    print_table,
    run_worker,
)

add_repo_paths()
SCRIPT = Path(__file__).resolve()
CLIP_FRAMES = 64
OURS = ("surgray-recent", "surgray-prune")
REFERENCES = ("sam2", "transformers")


def worker(args: argparse.Namespace) -> None:
    import torch
    from runners import Workload, build_runner

    from surgray.model.sam2.config import ModelConfig

    pin_threads(args.threads)
    torch.set_grad_enabled(False)
    folder = Path(args.workdir)
    cfg = ModelConfig.model_validate_json((folder / "config.json").read_text())
    data = np.load(folder / "clip.npz")
    state = torch.load(folder / "weights.pt", weights_only=True)
    work = Workload(cfg, state, data["frames"], data["boxes"].tolist(), num_frames=args.length)
    started = time.perf_counter()
    runner = build_runner(args.worker, work, offload_video_to_cpu=True)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    count = 0
    for _ in runner.frames():
        count += 1
    result = {
        "frames": count,
        "peak_rss": peak_rss(),
        "setup_s": setup_s,
        "per_frame_s": (time.perf_counter() - started) / max(count, 1),
    }
    video = getattr(runner, "video", None)  # surgray: what the tracker state holds
    if video is not None:
        result["state_bytes"] = video.nbytes()
    Path(args.result).write_text(json.dumps(result))


def slope(lengths: list[int], peaks: list[float]) -> float | None:
    if len(lengths) < 2:
        return None
    return float(np.polyfit(np.asarray(lengths, float), np.asarray(peaks, float), 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="micro")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--lengths", default="500,1000,2000,5000")
    parser.add_argument("--reference-max", type=int, default=2000)
    parser.add_argument("--impls", default=",".join(OURS + REFERENCES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, help="weights seed (default: per variant)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--quick", action="store_true", help="micro at 128 px, 20-40 frames")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.variant, args.image_size, args.lengths, args.reference_max = "micro", 128, "20,40", 40
        args.impls = "surgray-recent,sam2"
    lengths = [int(x) for x in args.lengths.split(",")]
    impls = args.impls.split(",")
    cfg = bench_config(args.variant, args.image_size)
    started = machine_line(args.threads)
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        import torch
        from runners import random_weights, synthetic_workload

        (Path(tmp) / "config.json").write_text(cfg.model_dump_json())
        seed = default_weight_seed(args.variant) if args.seed is None else args.seed
        torch.save(random_weights(cfg, seed), Path(tmp) / "weights.pt")
        frames, boxes = synthetic_workload(cfg, CLIP_FRAMES, 1, seed=0)
        np.savez(Path(tmp) / "clip.npz", frames=frames, boxes=np.asarray(boxes))
        for length in lengths:
            for impl in impls:
                if impl in REFERENCES and length > args.reference_max:
                    continue
                out = Path(tmp) / f"{impl}_{length}.json"
                result = run_worker(
                    SCRIPT,
                    ["--worker", impl, "--length", str(length), "--workdir", tmp,
                     "--result", str(out), "--threads", str(args.threads)],
                    args.threads,
                    args.timeout,
                )  # fmt: skip
                results[(impl, length)] = result
                print(
                    f"{impl}, {length} frames: peak {result['peak_rss'] / MB:.0f} MB, "
                    f"{result['per_frame_s'] * 1000:.0f} ms/frame ({result['wall_s']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(
            json.dumps({f"{i}:{n}": r for (i, n), r in results.items()}, indent=1)
        )
    rows = []
    for impl in impls:
        done = [n for n in lengths if (impl, n) in results]
        peaks = [results[(impl, n)]["peak_rss"] for n in done]
        cells = [fmt_mb(results[(impl, n)]["peak_rss"]) if (impl, n) in results else None
                 for n in lengths]  # fmt: skip
        fit = slope(done, peaks)
        growth = None
        if len(done) >= 2:
            growth = f"{(peaks[-1] - peaks[0]) / peaks[0]:+.1%} ({done[0]}->{done[-1]})"
        state = results.get((impl, done[-1]), {}).get("state_bytes") if done else None
        speed = [results[(impl, n)]["per_frame_s"] * 1000 for n in done]
        rows.append(
            [impl, *cells,
             None if fit is None else f"{fit:,.0f}",
             growth,
             None if state is None else f"{state / 1024:.0f} KiB",
             None if not speed else f"{np.median(speed):.0f}"]
        )  # fmt: skip
    print(f"machine: {started}; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    print_table(
        f"Peak RSS (MB) against video length: {cfg.name} at {cfg.image_size}px, 1 object "
        f"(references up to {args.reference_max} frames, sam2 with offload_video_to_cpu)",
        ["implementation", *[f"{n} frames" for n in lengths], "slope bytes/frame",
         "peak change", "tracker state at end", "ms/frame"],
        rows,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
