"""Where the annotate actor's peak resident memory comes from: model loading, step by step,
and what the C heap's settings trade for it.

Writes a Hiera-T@512 checkpoint with random weights (as bench_archive_throughput does), then in
a fresh process per run does what an annotate actor does when it starts and tracks: import
torch and surgray, `load_network` (checkpoint read, model built, weights loaded), the `Tracker`
(fast mode: the int8 copy), then tracks a few frames of synthetic clips with 3 boxes each:
`--videos N` clips at once in N threads of one torch thread each, as an actor with
`actors.concurrent_videos` N does. After each step it prints VmRSS (resident now) and VmHWM
(the peak so far), from /proc/self/status, and at the end the time per video-frame.

`--heap-envs` runs each precision once per allocator environment (`;`-separated, each
`NAME=VALUE[,NAME=VALUE]` or `default`), e.g. glibc's `MALLOC_MMAP_THRESHOLD_`, which a user can
set in the job's environment; the summary compares time and peak with the first.

    .venv/bin/python benchmarks/bench_load_memory.py             # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_load_memory.py --quick     # micro@128, seconds (CI)
    .venv/bin/python benchmarks/bench_load_memory.py --precisions fp32 --videos 2 --frames 24 \
        --heap-envs "default;MALLOC_MMAP_THRESHOLD_=4194304;MALLOC_ARENA_MAX=1"   # section 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MB,
    add_repo_paths,
    bench_config,
    child_env,
    current_rss,
    machine_line,
    peak_rss,
    print_table,
)

add_repo_paths()


def worker(args: argparse.Namespace) -> None:
    samples: list[tuple[str, float, float]] = []

    def sample(step: str) -> None:
        samples.append((step, current_rss() / MB, peak_rss() / MB))

    sample("python")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import surgray.model.sam2.network  # noqa: F401
    import surgray.tracking.tracker  # noqa: F401

    sample("import torch + surgray")
    from surgray.model.checkpoints.network_loading import load_network

    model = load_network(args.checkpoint, args.variant, image_size=args.image_size)
    model = model.eval()
    sample("load_network")
    from surgray.tracking.tracker import Tracker

    tracker = Tracker(model, {"name": "recent"}, precision=args.precision)
    del model
    sample(f"Tracker (precision {args.precision})")
    size = args.image_size
    per_thread = max(1, args.threads // args.videos)

    def track(number: int) -> None:
        torch.set_num_threads(per_thread)  # per calling thread, as the actor's calls do
        video = tracker.start(f"v{number}", (size, size), num_frames=args.frames)
        for obj_id in range(1, 4):
            x0 = 20 * obj_id
            tracker.add_box(video, obj_id, 0, [x0, x0, x0 + size // 4, x0 + size // 4])
        rng = np.random.default_rng(number)  # frames made one at a time, as a reader decodes
        for index in range(args.frames):
            tracker.step(video, rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            if number == 0 and index in (0, args.frames - 1):
                sample(f"tracked frame {index + 1}")
        tracker.close(video)

    start = time.perf_counter()
    if args.videos == 1:
        track(0)
    else:
        threads = [threading.Thread(target=track, args=(n,)) for n in range(args.videos)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seconds = (time.perf_counter() - start) / (args.videos * args.frames)
    sample("end")
    print("RESULT " + json.dumps({"samples": samples, "s_per_frame": seconds}), flush=True)


def parse_heap_envs(text: str) -> list[tuple[str, dict[str, str]]]:
    """`default;A=1,B=2` -> [("default", {}), ("A=1,B=2", {"A": "1", "B": "2"})]."""
    runs = []
    for spec in filter(None, (part.strip() for part in text.split(";"))):
        env: dict[str, str] = {}
        if spec != "default":
            for pair in spec.split(","):
                name, sep, value = pair.partition("=")
                if not sep or not name.strip():
                    raise argparse.ArgumentTypeError(f"{pair!r} is not NAME=VALUE")
                env[name.strip()] = value.strip()
        runs.append((spec, env))
    if not runs:
        raise argparse.ArgumentTypeError("no environment given")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--precisions", default="fp32,fast")
    parser.add_argument("--videos", type=int, default=1, help="clips tracked at once")
    parser.add_argument(
        "--heap-envs", type=parse_heap_envs, default="default", help="see the module docstring"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    args.variant = args.variant or ("micro" if args.quick else "sam2.1_hiera_tiny")
    args.image_size = args.image_size or (128 if args.quick else 512)
    frames = args.frames or (3 if args.quick else 10)
    if args.videos < 1 or frames < 1:
        parser.error("--videos and --frames must be at least 1")
    heap_envs = args.heap_envs
    import torch
    from runners import random_weights

    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    cfg = bench_config(args.variant, args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = str(Path(folder) / "model.pt")
        model = build_model(cfg)
        model.load_state_dict(random_weights(cfg, 1), strict=True)
        save_checkpoint(model, checkpoint)
        del model
        size_mb = os.path.getsize(checkpoint) / 2**20
        results: dict[tuple[str, str], dict] = {}
        for precision in args.precisions.split(","):
            for label, heap_env in heap_envs:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--checkpoint",
                    checkpoint,
                    "--variant",
                    args.variant,
                    "--image-size",
                    str(args.image_size),
                    "--precision",
                    precision,
                    "--frames",
                    str(frames),
                    "--threads",
                    str(args.threads),
                    "--videos",
                    str(args.videos),
                ]
                start = time.perf_counter()
                done = subprocess.run(
                    command,
                    env=child_env(args.threads) | heap_env,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                if done.returncode != 0:
                    raise SystemExit(f"worker {precision} {label} failed:\n{done.stderr[-3000:]}")
                line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
                results[precision, label] = json.loads(line[len("RESULT ") :])
                print(f"{precision} {label}: {time.perf_counter() - start:.0f} s", flush=True)
    del torch
    print(machine_line(args.threads))
    print(
        f"{args.variant}@{args.image_size}, checkpoint {size_mb:.0f} MB, {frames} frames x "
        f"{args.videos} video(s) at once, 3 objects"
    )
    for (precision, label), result in results.items():
        suffix = "" if len(heap_envs) == 1 else f", heap {label}"
        print_table(
            f"Resident memory of an actor-like process, precision {precision}{suffix} (MB)",
            ["after", "VmRSS", "VmHWM (peak so far)"],
            [[step, f"{rss:.0f}", f"{hwm:.0f}"] for step, rss, hwm in result["samples"]],
        )
    summary = []
    for (precision, label), result in results.items():
        first = results[precision, heap_envs[0][0]]
        peak = max(hwm for _, _, hwm in result["samples"])
        first_peak = max(hwm for _, _, hwm in first["samples"])
        summary.append([
            precision,
            label,
            f"{result['s_per_frame']:.3f}",
            f"{result['s_per_frame'] / first['s_per_frame']:.2f}x",
            f"{peak:.0f}",
            f"{round(peak - first_peak):+d}",
        ])  # fmt: skip
    print_table(
        "Time and peak per run (one run each: peaks vary by about +-40 MB between runs)",
        [
            "precision",
            "heap environment",
            "s per video-frame",
            "time vs first",
            "peak MB",
            "peak vs first MB",
        ],  # fmt: skip
        summary,
    )


if __name__ == "__main__":
    main()
