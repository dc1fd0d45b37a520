"""Speed of the evaluation metrics on a long, full-resolution video.

A synthetic 1280x1024 video (default 1,000 frames) with 3 objects: two instruments (a thick bar
with a jaw at its tip) and a tissue region, all moving. The prediction is the ground truth moved
and grown or shrunk, mostly by a few pixels and sometimes by tens, so boundaries partly match,
as a tracker's would.
Mask drawing is not timed; only scoring is.

Rows:
* ``score_label_maps``: J, F, Dice of every (frame, object) from label maps (the kernel).
* ``VideoScorer``: the evaluator's per-frame path (finds the ids in each frame, then scores them).
* ``full-frame dilation``: a plain DAVIS-style F (seg2bmap and two disk dilations of the whole
  frame per pair, as the DAVIS code does it), timed on a few frames and scaled up, for scale.

    .venv/bin/python benchmarks/bench_metrics.py [--frames 1000] [--chunk 50]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from surgray.eval.evaluate import VideoScorer
from surgray.eval.metrics import boundary_map, boundary_radius, score_label_maps

HEIGHT, WIDTH = 1024, 1280
OBJECT_IDS = (1, 2, 3)


def draw_frame(t: int, jitter: np.random.Generator | None = None) -> np.ndarray:
    """Label map of frame t; with `jitter`, a prediction-like perturbation of it."""
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    dx = dy = grow = 0
    if jitter is not None:
        # Mostly close, sometimes a few pixels off, now and then clearly wrong.
        reach, swell = ((3, 2), (12, 6), (40, 10))[jitter.choice(3, p=(0.7, 0.25, 0.05))]
        dx, dy = (int(v) for v in jitter.integers(-reach, reach + 1, size=2))
        grow = int(jitter.integers(-swell, swell + 1))
    # Tissue: a large slowly breathing region.
    cv2.ellipse(
        labels, (640 + dx, 700 + dy), (420 + grow + int(20 * np.sin(t / 30)), 220 + grow),
        5, 0, 360, 3, -1,
    )  # fmt: skip
    # Two instruments entering from the top corners, swinging.
    for obj_id, (x0, y0), phase in ((1, (0, 0), 0.0), (2, (WIDTH - 1, 0), 1.7)):
        angle = 0.6 + 0.25 * np.sin(t / 40 + phase)
        sign = 1 if x0 == 0 else -1
        tip = (int(x0 + sign * 650 * np.cos(angle)) + dx, int(y0 + 650 * np.sin(angle)) + dy)
        cv2.line(labels, (x0 + dx, y0 + dy), tip, obj_id, 46 + 2 * grow)
        cv2.ellipse(labels, tip, (60 + grow, 25 + grow), np.degrees(angle), 0, 360, obj_id, -1)
    return labels


def dilation_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Boundary F the way the DAVIS code computes it: whole-frame disk dilations."""
    axis = np.arange(-radius, radius + 1)
    disk = ((axis[:, None] ** 2 + axis[None, :] ** 2) <= radius**2).astype(np.uint8)
    pb, gb = boundary_map(pred), boundary_map(gt)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 or n_g == 0:
        return float(n_p == n_g)
    precision = np.count_nonzero(pb & cv2.dilate(gb.view(np.uint8), disk).astype(bool)) / n_p
    recall = np.count_nonzero(gb & cv2.dilate(pb.view(np.uint8), disk).astype(bool)) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--baseline-frames", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # Wall and CPU seconds: on a shared machine the CPU time is the steadier figure.
    timings = {"score_label_maps": [0.0, 0.0], "VideoScorer": [0.0, 0.0]}
    scorer = VideoScorer("bench")
    j_sum = f_sum = 0.0
    for start in range(0, args.frames, args.chunk):
        frames = range(start, min(start + args.chunk, args.frames))
        gt = np.stack([draw_frame(t) for t in frames])
        pred = np.stack([draw_frame(t, rng) for t in frames])

        tic, cpu = time.perf_counter(), time.process_time()
        scores = score_label_maps(pred, gt, OBJECT_IDS)
        timings["score_label_maps"][0] += time.perf_counter() - tic
        timings["score_label_maps"][1] += time.process_time() - cpu
        j_sum += float(scores.j.sum())
        f_sum += float(scores.f.sum())

        tic, cpu = time.perf_counter(), time.process_time()
        for t, p, g in zip(frames, pred, gt):
            scorer.add_frame(f"{t:05d}", g, p)
        timings["VideoScorer"][0] += time.perf_counter() - tic
        timings["VideoScorer"][1] += time.process_time() - cpu

    radius = boundary_radius(HEIGHT, WIDTH)
    n_base = min(args.baseline_frames, args.frames)
    gt = np.stack([draw_frame(t) for t in range(n_base)])
    pred = np.stack([draw_frame(t, np.random.default_rng(0)) for t in range(n_base)])
    tic, cpu = time.perf_counter(), time.process_time()
    for p, g in zip(pred, gt):
        for obj_id in OBJECT_IDS:
            dilation_f(p == obj_id, g == obj_id, radius)
    scale = args.frames / n_base
    baseline = [(time.perf_counter() - tic) * scale, (time.process_time() - cpu) * scale]

    pairs = args.frames * len(OBJECT_IDS)
    print(
        f"{args.frames} frames x {len(OBJECT_IDS)} objects at {WIDTH}x{HEIGHT} "
        f"(disk radius {radius}); mean J {j_sum / pairs:.3f}, mean F {f_sum / pairs:.3f}"
    )
    print(f"{'method':<32} {'wall s':>8} {'CPU s':>8} {'CPU ms/frame':>13}")
    rows = [*timings.items(), (f"full-frame dilation (x{args.frames}/{n_base})", baseline)]
    for name, (wall, cpu) in rows:
        print(f"{name:<32} {wall:>8.2f} {cpu:>8.2f} {1000 * cpu / args.frames:>13.2f}")


if __name__ == "__main__":
    main()
