"""Memory of a long streaming run: does anything grow with the number of frames?

Streams a synthetic video (default 5,000 frames, 64x64, two objects: one click, one box) through
`surgray.tracking.Tracker` with the micro model (random weights), once per memory policy, each
in its own process. Prints per policy the tracker state's tensor bytes and the process's peak
resident memory (VmHWM) after 200 frames and at the end; growth must stay under 50 MiB.
The long-term banks of `dlm` / `divemem` get IoU gates of 0 so they really fill and cycle
(random weights predict low IoUs).

    nice .venv/bin/python benchmarks/bench_long_video.py [--frames 5000] [--policies recent,dlm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_FRAME = 200
MAX_GROWTH_MIB = 50.0
POLICIES = {
    "recent": {"name": "recent"},
    "prune": {"name": "prune"},
    "dlm": {"name": "dlm", "iou_gate": 0.0},
    "divemem": {"name": "divemem", "iou_gate": 0.0, "require_object_present": False},
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _frame(t: int, size: int):
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 2] = 90
    cx, cy = size / 2 + size / 5 * np.sin(t / 7), size / 2 + size / 6 * np.cos(t / 5)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size / 7) ** 2] = (220, 200, 60)
    img[(abs(xx - size / 4) < size / 10) & (abs(yy - size / 4) < size / 10)] = (30, 200, 230)
    return img


def worker(policy: str, frames: int, size: int) -> dict:
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    from devtools.sam2_reference import randomize_
    from surgray.model.checkpoints.variants import micro_config
    from surgray.model.sam2.network import SAM2Model
    from surgray.tracking.tracker import Tracker

    torch.set_num_threads(1)
    model = SAM2Model(micro_config(size))
    randomize_(model, 3)
    tracker = Tracker(model.eval(), POLICIES[policy])
    state = tracker.start("long", (size, size))
    tracker.add_points(state, 1, 0, [[size / 2, size * 0.66]], [1])
    tracker.add_box(state, 2, 0, (size * 0.1, size * 0.1, size * 0.4, size * 0.4))
    marks = {}
    start = time.perf_counter()
    for t in range(frames):
        tracker.step(state, _frame(t, size))
        if t + 1 in (CHECKPOINT_FRAME, frames):
            marks[t + 1] = {
                "state_bytes": state.nbytes(),
                "peak_rss_kib": _status_kib("VmHWM"),
                "rss_kib": _status_kib("VmRSS"),
                "seconds": time.perf_counter() - start,
            }
    return {"policy": policy, "frames": frames, "marks": marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames <= CHECKPOINT_FRAME:
        parser.error(f"--frames must exceed {CHECKPOINT_FRAME}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.frames, args.size)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    rows = []
    for policy in args.policies.split(","):
        if policy not in POLICIES:
            parser.error(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        command = [sys.executable, __file__, "--worker", policy, "--frames", str(args.frames)]
        command += ["--size", str(args.size)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    _print_table(rows, args)


def _print_table(rows: list[dict], args: argparse.Namespace) -> None:
    n, first = args.frames, CHECKPOINT_FRAME
    print(f"{n} frames of {args.size}x{args.size}, micro model, 2 objects, 1 thread, CPU")
    header = (
        f"{'policy':<9} {'ms/frame':>8} {'state B @' + str(first):>13} {'state B @' + str(n):>13} "
        f"{'peak RSS MiB @' + str(first):>18} {'peak RSS MiB @' + str(n):>19} {'growth MiB':>10}  ok"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        a, b = row["marks"][str(first)], row["marks"][str(n)]
        growth = (b["peak_rss_kib"] - a["peak_rss_kib"]) / 1024
        ms = (b["seconds"] - a["seconds"]) / (n - first) * 1000
        ok = "yes" if growth < MAX_GROWTH_MIB else "NO"
        print(
            f"{row['policy']:<9} {ms:>8.1f} {a['state_bytes']:>13} {b['state_bytes']:>13} "
            f"{a['peak_rss_kib'] / 1024:>18.1f} {b['peak_rss_kib'] / 1024:>19.1f} "
            f"{growth:>10.1f}  {ok}"
        )


if __name__ == "__main__":
    main()
