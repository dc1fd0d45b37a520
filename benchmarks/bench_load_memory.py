"""Where the annotate actor's peak resident memory comes from: model loading, step by step.

Writes a Hiera-T@512 checkpoint with random weights (as bench_archive_throughput does), then in
a fresh process per precision does what an annotate actor does when it starts and tracks:
import torch and surgray, `load_network` (checkpoint read, model built, weights loaded), the
`Tracker` (fast mode: the int8 copy), then tracks a few frames of a synthetic clip with 3 boxes.
After each step it prints VmRSS (resident now) and VmHWM (the peak so far), from
/proc/self/status. Run with `--steps` to also split `load_network` into its parts.

    .venv/bin/python benchmarks/bench_load_memory.py             # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_load_memory.py --quick     # micro@128, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_repo_paths,
    bench_config,
    child_env,
    machine_line,
    print_table,
)

add_repo_paths()


def status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    samples: list[tuple[str, float, float]] = []

    def sample(step: str) -> None:
        samples.append((step, status_mb("VmRSS"), status_mb("VmHWM")))

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
    rng = np.random.default_rng(0)
    video = tracker.start("v", (size, size), num_frames=args.frames)
    for obj_id in range(1, 4):
        x0 = 20 * obj_id
        tracker.add_box(video, obj_id, 0, [x0, x0, x0 + size // 4, x0 + size // 4])
    for index in range(args.frames):
        frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        tracker.step(video, frame)
        if index in (0, args.frames - 1):
            sample(f"tracked frame {index + 1}")
    print("RESULT " + json.dumps(samples), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--precisions", default="fp32,fast")
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
        columns: dict[str, list[tuple[str, float, float]]] = {}
        for precision in args.precisions.split(","):
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
            ]
            start = time.perf_counter()
            done = subprocess.run(
                command, env=child_env(args.threads), capture_output=True, text=True, timeout=1800
            )
            if done.returncode != 0:
                raise SystemExit(f"worker {precision} failed:\n{done.stderr[-3000:]}")
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            columns[precision] = json.loads(line[len("RESULT ") :])
            print(f"{precision}: {time.perf_counter() - start:.0f} s", flush=True)
    del torch
    print(machine_line(args.threads))
    print(
        f"{args.variant}@{args.image_size}, checkpoint {size_mb:.0f} MB, {frames} frames, 3 objects"
    )
    for precision, samples in columns.items():
        print_table(
            f"Resident memory of an actor-like process, precision {precision} (MB)",
            ["after", "VmRSS", "VmHWM (peak so far)"],
            [[step, f"{rss:.0f}", f"{hwm:.0f}"] for step, rss, hwm in samples],
        )


if __name__ == "__main__":
    main()
