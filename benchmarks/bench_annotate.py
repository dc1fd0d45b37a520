"""Batch annotation throughput (issue 9, item 3): frames/s of the annotate job on Ray Data with
1 and 2 actors, and with multi-video batching off (1 video per step) and on (4 per step).

    python benchmarks/bench_annotate.py            # 8 clips x 48 frames at 256x256, median of 3
    python benchmarks/bench_annotate.py --quick    # 4 clips x 12 frames at 128x128, 1 round
    python benchmarks/bench_annotate.py --configs 1x1,2x4 --repeats 5

It generates seeded synthetic surgical clips (MP4), a manifest that prompts every object on
the first frame with its ground-truth mask, and a model checkpoint (random weights unless
`--checkpoint` names one: throughput does not depend on what the weights are), then runs the
real job (`surgray.annotate.pipeline.run_annotate`) on ONE local Ray started once
(`num_cpus=2`, no dashboard). A configuration `AxK` is A actors (0.5 CPU and 1 torch thread
each) stepping K videos together; every run writes to a fresh output prefix, runs are
interleaved round by round and the median is kept.

Two rates are reported:
- job frames/s: frames over the job's wall time, end to end (planning, Ray Data scheduling,
  actor start and model load, decode, tracking, Parquet writes, finalizing each video);
- actor frames/s: frames over the time actors spent on their batches, from the per-video
  status rows (a batch of K videos stepped together is counted once: the longest of its
  videos' wall times). It is the rate of one actor, with no Ray overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NOT_MEASURED,
    add_repo_paths,
    fmt,
    interleaved_order,
    median_or_none,
    print_table,
)

add_repo_paths()

RAY_CPUS = 2
ACTOR_CPUS = 0.5
ACTOR_THREADS = 1
MIN_FRAMES_WITH_EVENTS = 48  # leave-and-return, occlusion and smoke fit in a clip this long
ALL_CONFIGS = ("1x1", "1x4", "2x1", "2x4")  # actors x videos per step


@dataclass(frozen=True)
class JobShape:
    """One configuration: `actors` actors, each stepping `per_step` videos together."""

    actors: int
    per_step: int

    @property
    def name(self) -> str:
        return f"{self.actors}x{self.per_step}"

    @classmethod
    def parse(cls, text: str) -> JobShape:
        parts = text.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"config {text!r}: write ACTORSxVIDEOS_PER_STEP, e.g. 2x4")
        return cls(int(parts[0]), int(parts[1]))


@dataclass(frozen=True)
class RunResult:
    shape: JobShape
    round: int
    frames: int
    failed: int
    wall_s: float  # the job's own wall time (JobSummary)
    job_fps: float
    actor_fps: float | None


@dataclass(frozen=True)
class BenchInputs:
    manifest: Path
    video_ids: tuple[str, ...]  # manifest order, which is the order work items are batched in
    objects: int  # prompted objects over all videos
    checkpoint: str
    variant: str
    image_size: int
    random_weights: bool


# ------------------------------------------------------------------ inputs
def first_frame_objects(clip) -> list[dict]:
    """Every object visible on frame 0, prompted with its ground-truth mask (RLE)."""
    from surgray.io.masks import encode_rle

    objects = []
    for info in clip.objects:
        mask = clip.masks[0] == info.obj_id
        if not mask.any():
            continue
        rle = encode_rle(mask[None].astype(bool))[0]
        objects.append(
            {
                "obj_id": int(info.obj_id),
                "label": info.category,
                "frame": 0,
                "mask_rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
            }
        )
    return objects


def write_videos(folder: Path, videos: int, frames: int, size: int) -> tuple[Path, list[str], int]:
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video

    (folder / "videos").mkdir(parents=True, exist_ok=True)
    # Clips shorter than the events need are drawn without them (speed does not depend on them).
    short = frames < MIN_FRAMES_WITH_EVENTS
    events = dict(leave_and_return=False, occlusion=False, smoke=False) if short else {}
    rows, ids, total_objects = [], [], 0
    for index in range(videos):
        clip = generate_clip(
            SyntheticClipConfig(num_frames=frames, height=size, width=size, **events),
            seed=100 + index,
        )
        objects = first_frame_objects(clip)
        if not objects:
            raise RuntimeError(f"synthetic clip {index} has no object on its first frame")
        video_id = f"clip-{index:03d}"
        path = folder / "videos" / f"{video_id}.mp4"
        write_clip_video(clip, str(path))
        rows.append({"video_uri": str(path), "video_id": video_id, "prompts": {"objects": objects}})
        ids.append(video_id)
        total_objects += len(objects)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, ids, total_objects


def model_checkpoint(folder: Path, args: argparse.Namespace) -> tuple[str, bool]:
    """(checkpoint path, random weights?)."""
    if args.checkpoint:
        return args.checkpoint, False
    import torch

    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    torch.manual_seed(0)
    path = folder / f"random_{args.variant}_{args.image_size}.pt"
    save_checkpoint(build_model(args.variant, image_size=args.image_size), str(path))
    return str(path), True


def prepare_inputs(folder: Path, args: argparse.Namespace) -> BenchInputs:
    manifest, ids, objects = write_videos(folder, args.videos, args.frames, args.size)
    checkpoint, random_weights = model_checkpoint(folder, args)
    return BenchInputs(
        manifest, tuple(ids), objects, checkpoint, args.variant, args.image_size, random_weights
    )


# ------------------------------------------------------------------ runs
def start_ray(temp_dir: Path) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        _temp_dir=str(temp_dir),
        object_store_memory=200 * 1024**2,
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "OMP_NUM_THREADS": str(ACTOR_THREADS),
                "MKL_NUM_THREADS": str(ACTOR_THREADS),
                # Idle OpenMP threads sleep rather than spin on this oversubscribed machine.
                "OMP_WAIT_POLICY": "PASSIVE",
            }
        },
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def job_config(inputs: BenchInputs, shape: JobShape, prefix: Path):
    from surgray.annotate.config import AnnotateConfig

    return AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": str(inputs.manifest)},
            "output": {"prefix": str(prefix)},
            "model": {
                "variant": inputs.variant,
                "checkpoint": inputs.checkpoint,
                "image_size": inputs.image_size,
                "policy": "recent",
            },
            "actors": {
                "count": shape.actors,
                "num_cpus": ACTOR_CPUS,
                "torch_threads": ACTOR_THREADS,
            },
            "batching": {"videos_per_step": shape.per_step},
            "privacy": {"hash_video_ids": False},
            "exports": ["parquet"],
        },
        source=f"bench_annotate {shape.name}",
    )


def actor_fps(statuses, video_ids: tuple[str, ...], per_step: int) -> float | None:
    """Frames over actor busy time; the K videos of a batch share one span (their max)."""
    by_id = {s.video_id: s for s in statuses if s.state == "done"}
    if len(by_id) != len(video_ids):
        return None
    busy = 0.0
    for start in range(0, len(video_ids), per_step):
        busy += max(by_id[v].wall_s for v in video_ids[start : start + per_step])
    frames = sum(s.frames for s in by_id.values())
    return frames / busy if busy > 0 else None


def run_once(inputs: BenchInputs, shape: JobShape, prefix: Path, round_index: int) -> RunResult:
    from surgray.annotate.pipeline import run_annotate

    outcome = run_annotate(job_config(inputs, shape, prefix))
    summary = outcome.summary
    if summary.failed:
        raise RuntimeError(f"{shape.name} round {round_index}: {outcome.report()}")
    return RunResult(
        shape=shape,
        round=round_index,
        frames=summary.frames,
        failed=summary.failed,
        wall_s=summary.wall_s,
        job_fps=summary.fps,
        actor_fps=actor_fps(outcome.statuses, inputs.video_ids, shape.per_step),
    )


# ------------------------------------------------------------------ report
def load_line() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table_rows(shapes: list[JobShape], results: list[RunResult]) -> list[list[str]]:
    medians = {}
    for shape in shapes:
        runs = [r for r in results if r.shape == shape]
        medians[shape] = (
            statistics.median(r.wall_s for r in runs),
            statistics.median(r.job_fps for r in runs),
            median_or_none([r.actor_fps for r in runs]),
            runs,
        )
    base = medians.get(JobShape(1, 1))
    rows = []
    for shape in shapes:
        wall, job, actor, runs = medians[shape]
        ratio = f"{job / base[1]:.2f}x" if base and base[1] > 0 else NOT_MEASURED
        rows.append(
            [
                shape.name,
                str(shape.actors),
                str(shape.per_step),
                str(runs[0].frames),
                fmt(wall, digits=1),
                fmt(job, digits=1),
                ratio,
                fmt(actor, digits=1),
                " / ".join(f"{r.job_fps:.1f}" for r in sorted(runs, key=lambda r: r.round)),
            ]
        )
    return rows


def report(args, inputs: BenchInputs, shapes, results, load_start: str, load_end: str) -> str:
    import torch

    weights = "random weights (throughput only)" if inputs.random_weights else inputs.checkpoint
    title = (
        f"Batch annotation: {inputs.variant} at {inputs.image_size}px, {weights}; "
        f"{args.videos} videos x {args.frames} frames at {args.size}x{args.size}, "
        f"{inputs.objects} objects prompted on frame 0"
    )
    header = [
        "config",
        "actors",
        "videos/step",
        "frames",
        "job wall s",
        "job frames/s",
        "vs 1x1",
        "actor frames/s",
        "job frames/s per round",
    ]
    text = print_table(title, header, table_rows(shapes, results))
    notes = [
        "",
        f"One local Ray (num_cpus={RAY_CPUS}), actors {ACTOR_CPUS} CPU and {ACTOR_THREADS} torch "
        f"thread each; policy recent; median of {args.repeats} interleaved rounds, each run "
        "into a fresh output prefix.",
        "job frames/s: end to end (planning, Ray Data scheduling, actor start and model load, "
        "decode, tracking, Parquet); actor frames/s: one actor's rate over its batches "
        "(status rows).",
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average (1, 5, 15 min) at start "
        f"{load_start}, at end {load_end}.",
    ]
    print("\n".join(notes), flush=True)
    return text + "\n" + "\n".join(notes)


# ------------------------------------------------------------------ main
def log(message: str) -> None:
    print(f"[bench_annotate] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 clips x 12 frames at 128, 1 round")
    parser.add_argument("--videos", type=int, default=None, help="clips (default 8; quick 4)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (48; quick 12)")
    parser.add_argument("--size", type=int, default=None, help="clip side in px (256; quick 128)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--configs", default=",".join(ALL_CONFIGS), help="e.g. 1x1,2x4")
    parser.add_argument("--variant", default="micro", help="model variant (default micro)")
    parser.add_argument("--image-size", type=int, default=128, help="model input size")
    parser.add_argument("--checkpoint", default=None, help="weights; default: random, saved")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first run")
    args = parser.parse_args(argv)
    quick = args.quick
    args.videos = args.videos or (4 if quick else 8)
    args.frames = args.frames or (12 if quick else 48)
    args.size = args.size or (128 if quick else 256)
    args.repeats = args.repeats or (1 if quick else 3)
    args.warmup = not (args.no_warmup or quick)
    try:
        args.shapes = list(dict.fromkeys(JobShape.parse(t) for t in args.configs.split(",")))
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("videos", "frames", "size", "repeats", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the driver only plans and collects; actors do the tracking
    own_workdir = args.workdir is None
    workdir = (
        Path(tempfile.mkdtemp(prefix="sg-annot-", dir="/tmp")) if own_workdir else args.workdir
    )
    workdir.mkdir(parents=True, exist_ok=True)
    load_start = load_line()
    try:
        began = time.monotonic()
        inputs = prepare_inputs(workdir / "inputs", args)
        log(f"inputs ready in {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        ray_temp = Path(tempfile.mkdtemp(prefix="sgab", dir="/tmp"))  # short: socket paths
        start_ray(ray_temp)
        log(f"Ray started in {time.monotonic() - began:.1f} s")
        try:
            if args.warmup:  # first use of the cluster pays worker start and imports
                run_once(inputs, args.shapes[0], workdir / "runs" / "warmup", -1)
            results = []
            names = [s.name for s in args.shapes]
            for round_index, name in interleaved_order(names, args.repeats):
                shape = JobShape.parse(name)
                prefix = workdir / "runs" / f"{name}-r{round_index}"
                result = run_once(inputs, shape, prefix, round_index)
                log(
                    f"{name} round {round_index}: {result.frames} frames, "
                    f"{result.wall_s:.1f} s, {result.job_fps:.1f} frames/s"
                )
                results.append(result)
        finally:
            import ray

            ray.shutdown()
            shutil.rmtree(ray_temp, ignore_errors=True)
        report(args, inputs, args.shapes, results, load_start, load_line())
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
