"""Archive throughput (issue 26, item 2): surgray's annotate job on Ray against the loop a user
of Meta's reference would write, on the same archive, interleaved in one run.

The archive: N synthetic surgical videos (MP4 on disk, seeded), 3 objects each prompted by a
box on frame 0 (the ground truth's largest objects), the reference scenario's network
(Hiera-T at 512 px, random weights of seed 1: throughput and agreement only).

Sides, each a fresh process (2 torch threads, OMP_WAIT_POLICY=PASSIVE, niced alike):
- `reference`: a plain loop over `SAM2VideoPredictor` (sam2 1.1.0) as its README teaches:
  per video, frames extracted from the MP4 to a folder with PyAV (its README's route for
  videos; without decord, which this machine lacks, `init_state` reads only JPEG folders; the
  frames are written losslessly, PNG data under .jpg names, which its PIL loader opens by
  content, so both sides see the same pixels), `init_state`, `add_new_points_or_box` per
  object, `propagate_in_video`, every mask RLE-encoded with pycocotools and the video's rows
  written to one Parquet file.
- `exact` / `fast`: surgray's annotate job as a user runs it on one machine, through the CLI's
  own entry point (`python -m surgray.annotate.cli --config ... --num-cpus <threads>`, what
  `surgray annotate` runs): it starts its own local Ray, plans, runs Ray Data's actor pool and
  finalizes; `model.precision` fp32 / fast, one actor (`num_cpus` 1, `torch_threads` =
  threads), one video per step, `--concurrent-videos` N work items at once in the actor
  (`actors.concurrent_videos`; default: threads, the recommended CPU setting, so each video
  runs on one torch thread).
- `exact-serial` / `fast-serial` (only when named in `--sides`): the same with
  `actors.concurrent_videos` 1 (the job's default: one video at a time on all the threads),
  to show what the concurrent videos bring, in the same run.
- `exact-ray-nice15` (only when named in `--sides`): `exact` with `RAY_worker_niceness=15`,
  Ray's default worker priority, which the job used before it set its own workers to the
  driver's priority: what that default costs on a shared machine, in the same run.
Hole filling is off on every side: the reference's needs its CUDA extension and skips it on
CPU, so the checkpoint's `prompting.fill_hole_area` is 0 for comparable masks.

Repetitions are interleaved (reference, exact, fast, then the next round with the order
rotated) so a shared machine's load hits every side alike; each round gives paired ratios.

Time. `wall s`: from the first video opened to the last mask row written (the reference
measures it in its loop; for the job it is read from its outputs: the last Parquet part's
mtime, and the first video's last part mtime less its status record's `wall_s`). Model
loading, Ray's start and the job's planning are outside it; `process s` is the whole process
(imports, model load, and for the job its planning, Ray Data and the actor's start).
Memory: `tree RSS` / `tree PSS` are the peak sums over the side's whole process tree (for the
job: the CLI driver and its Ray: GCS, raylet, workers), RSS sampled from /proc every 0.25 s and
PSS every 5 s (`proc_memory.py`: PSS costs the kernel a page-table walk per process, which at
4 samples a second took 30% of a core from the job's side alone); `largest process RSS` is the
kernel's peak (VmHWM) of the biggest single process (the reference's loop; the job's model
actor). CPU: user + system seconds of every process in the
tree (`CPU s (tree)`) and of the busiest one (the model's), and a table of the busiest
processes of each side: what the pipeline around the model costs.
Masks: compared with the reference's row by row (frame, object): `identical` means every mask
agrees on >= 99.9% of its pixels.

    .venv/bin/python benchmarks/bench_archive_throughput.py                 # 8 x 48, 1 round
    .venv/bin/python benchmarks/bench_archive_throughput.py --videos 2 --frames 20 --rounds 2 \
        --sides reference,exact,fast,exact-ray-nice15                     # benchmarks/README 7
    .venv/bin/python benchmarks/bench_archive_throughput.py --quick         # micro, seconds
    .venv/bin/python benchmarks/bench_archive_throughput.py --rounds 2 \
        --sides reference,exact,fast,exact-serial,fast-serial               # issue 26, N vs 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MB,
    add_repo_paths,
    child_env,
    interleaved_order,
    machine_line,
    peak_rss,
    pin_threads,
    print_table,
)
from proc_memory import TreeSampler  # noqa: E402

add_repo_paths()
SCRIPT = Path(__file__).resolve()
SIDES = ("reference", "exact", "fast")
# Optional side: exact mode with Ray's default worker priority (nice +15 relative to the
# driver), what the job ran at before `connect_ray` set worker_niceness 0.
NICE15 = "exact-ray-nice15"
# Optional sides: the job with one video at a time per actor (actors.concurrent_videos 1).
SERIAL = ("exact-serial", "fast-serial")
IDENTICAL = 0.999
NICE = 5


# ------------------------------------------------------------------ the archive
def model_config(args):
    from surgray.model.checkpoints.variants import get_variant, micro_config

    cfg = micro_config(args.image_size) if args.variant == "micro" else None
    cfg = cfg or get_variant(args.variant, image_size=args.image_size)
    # The reference cannot fill holes on CPU; the job's checkpoint records 0 so both match.
    return cfg.updated(prompting={"fill_hole_area": 0})


def prepare(folder: Path, args) -> None:
    """Videos, manifest, weights (reference state dict and a surgray checkpoint), job configs."""
    import torch
    from runners import random_weights

    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    (folder / "videos").mkdir(parents=True)
    rows = []
    for index in range(args.videos):
        clip = generate_clip(
            SyntheticClipConfig(
                num_frames=args.frames,
                height=args.size,
                width=args.size,
                num_instruments=3,
                leave_and_return=False,
                occlusion=False,
                smoke=False,
                motion_blur=False,
            ),
            seed=200 + index,
        )
        first = clip.masks[0]
        ids, counts = np.unique(first[first > 0], return_counts=True)
        objects = []
        for obj_id in ids[np.argsort(-counts, kind="stable")][: args.objects]:
            ys, xs = np.nonzero(first == obj_id)
            box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
            objects.append({"obj_id": int(obj_id), "frame": 0, "box": box})
        video_id = f"video-{index:03d}"
        path = folder / "videos" / f"{video_id}.mp4"
        write_clip_video(clip, str(path))
        rows.append({"video_uri": str(path), "video_id": video_id, "prompts": {"objects": objects}})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = model_config(args)
    state = random_weights(cfg, args.seed)
    torch.save(state, folder / "weights.pt")
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    save_checkpoint(model, str(folder / "model.pt"))
    (folder / "config.json").write_text(cfg.model_dump_json())
    jobs = [("exact", "fp32", args.concurrent_videos), ("fast", "fast", args.concurrent_videos),
            ("exact-serial", "fp32", 1), ("fast-serial", "fast", 1)]  # fmt: skip
    for side, precision, concurrent in jobs:
        job = {
            "inputs": {"manifest": str(folder / "manifest.jsonl")},
            "output": {"prefix": str(folder / "out-placeholder")},  # --output per run
            "model": {
                "variant": "micro" if args.variant == "micro" else args.variant,
                "checkpoint": str(folder / "model.pt"),
                "image_size": args.image_size,
                "policy": "recent",
                "precision": precision,
            },
            "actors": {
                "count": 1,
                "num_cpus": 1,
                "torch_threads": args.threads,
                "concurrent_videos": concurrent,
            },
            "batching": {"videos_per_step": args.videos_per_step},
            "privacy": {"hash_video_ids": False},
            "exports": ["parquet"],
        }
        # JSON is YAML: the CLI reads it as its config file.
        (folder / f"job-{side}.yaml").write_text(json.dumps(job, indent=1))


# ------------------------------------------------------------------ the reference's loop
def reference_worker(folder: Path, out: Path) -> dict:
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from pycocotools import mask as mask_utils

    from devtools.sam2_reference import build_reference
    from surgray.model.sam2.config import ModelConfig

    cfg = ModelConfig.model_validate_json((folder / "config.json").read_text())
    predictor = build_reference(cfg, video=True)
    predictor.load_state_dict(torch.load(folder / "weights.pt", weights_only=True), strict=True)
    predictor.fill_hole_area = 0  # needs sam2's CUDA extension: skipped on CPU anyway
    tasks = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    out.mkdir(parents=True)
    frames = 0
    first_open = time.time()
    for task in tasks:
        with tempfile.TemporaryDirectory() as frame_dir:
            with av.open(task["video_uri"]) as container:
                for t, frame in enumerate(container.decode(video=0)):
                    # PNG data under a .jpg name: lossless, and opened by content by PIL.
                    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
                    image.save(Path(frame_dir) / f"{t:05d}.jpg", format="PNG", compress_level=1)
            with torch.inference_mode():
                state = predictor.init_state(frame_dir)
                for obj in task["prompts"]["objects"]:
                    predictor.add_new_points_or_box(
                        state, obj["frame"], obj["obj_id"], box=np.asarray(obj["box"])
                    )
                rows = {"frame_idx": [], "obj_id": [], "rle_counts": [], "rle_size": []}
                for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
                    masks = (logits[:, 0] > 0).numpy()
                    for obj_id, mask in zip(obj_ids, masks):
                        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                        rows["frame_idx"].append(int(frame_idx))
                        rows["obj_id"].append(int(obj_id))
                        rows["rle_counts"].append(rle["counts"].decode("ascii"))
                        rows["rle_size"].append([int(v) for v in rle["size"]])
                    frames += 1
                predictor.reset_state(state)
            table = pa.Table.from_pydict(rows)
            pq.write_table(table, out / f"video_id={task['video_id']}.parquet")
    last_row = time.time()
    return {"frames": frames, "first_open": first_open, "last_row": last_row, "vmhwm": peak_rss()}


def worker_main(args) -> None:
    pin_threads(args.threads)
    result = reference_worker(Path(args.folder), Path(args.out))
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ the job's side
def job_times(out: Path) -> dict:
    """Frames, first video opened and last row written, from the job's outputs (see the
    module docstring), and the failed videos' errors."""
    frames, starts, ends, errors = 0, [], [], []
    for status_path in sorted((out / "status").glob("video_id=*.json")):
        status = json.loads(status_path.read_text())
        if status["state"] != "done":
            errors.append(f"{status['video_id']}: {status['error']}")
            continue
        video_dir = out / "masks" / f"video_id={status['video_id']}"
        last = max(p.stat().st_mtime for p in video_dir.glob("*.parquet"))
        frames += int(status["frames"])
        starts.append(last - float(status["wall_s"]))
        ends.append(last)
    if errors or not ends:
        raise RuntimeError(f"the job failed: {errors or 'no status records'}")
    return {"frames": frames, "first_open": min(starts), "last_row": max(ends)}


# ------------------------------------------------------------------ one run of a side
def run_side(side: str, folder: Path, out: Path, args, env) -> dict:
    if side == "reference":
        result_path = folder / f"result-{out.name}.json"
        cmd = [sys.executable, str(SCRIPT), "--worker", "--folder", str(folder),
               "--out", str(out), "--threads", str(args.threads), "--result", str(result_path)]  # fmt: skip
    else:
        # `surgray annotate` as a user runs it on one machine: it starts its own local Ray
        # (GCS, raylet, workers: all children of this process, so all in the sampled tree),
        # in a short temp dir: Ray's socket paths must stay under 108 bytes.
        config = folder / f"job-{'exact' if side == NICE15 else side}.yaml"
        if side == NICE15:
            env = {**env, "RAY_worker_niceness": "15"}
        cmd = [sys.executable, "-m", "surgray.annotate.cli", "--config", str(config),
               "--num-cpus", str(args.threads),
               "--ray-temp-dir", tempfile.mkdtemp(prefix="r", dir=folder), "--output", str(out),
               "--quiet"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(["nice", "-n", str(NICE), *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=folder)  # fmt: skip
    sampler = TreeSampler([proc.pid]).start()
    try:
        text, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the CLI shuts its Ray down on the way out
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sampler.stop()
        raise
    peak = sampler.stop()
    process_s = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed (rc {proc.returncode}):\n{text[-3000:]}")
    times = json.loads(result_path.read_text()) if side == "reference" else job_times(out)
    return {
        **times,
        "wall_s": times["last_row"] - times["first_open"],
        "process_s": process_s,
        "tree_rss": peak.rss,
        "tree_pss": peak.pss,
        "largest_rss": peak.largest_rss,
        "processes": peak.processes,
        "cpu": sampler.cpu_by_process(),
        "cpu_window": sampler.cpu_between(times["first_open"], times["last_row"]),
        "load": os.getloadavg()[0],
    }


# ------------------------------------------------------------------ masks
def read_masks(out: Path) -> dict[tuple[str, int, int], dict]:
    """(video_id, frame, obj) -> RLE, from every Parquet file under `out`."""
    import pyarrow.parquet as pq

    masks = {}
    for path in sorted(out.rglob("*.parquet")):
        named = [p for p in path.relative_to(out).parts if p.startswith("video_id=")]
        if not named:  # the job's other tables (plans, summaries): not mask rows
            continue
        video_id = named[0].split("=", 1)[1]
        video_id = video_id.removesuffix(".parquet")
        table = pq.read_table(path, columns=["frame_idx", "obj_id", "rle_counts", "rle_size"])
        for row in table.to_pylist():
            rle = {"counts": row["rle_counts"].encode("ascii"), "size": list(row["rle_size"])}
            masks[(video_id, int(row["frame_idx"]), int(row["obj_id"]))] = rle
    return masks


def compare(ours: dict, reference: dict) -> str:
    from pycocotools import mask as mask_utils

    if set(ours) != set(reference):
        missing, extra = len(set(reference) - set(ours)), len(set(ours) - set(reference))
        return f"DIFFERENT rows: {missing} missing, {extra} extra"
    worst, total, equal, coverage, agree_all = 1.0, 0, 0, 0.0, 0.0
    for key, rle in reference.items():
        a, b = mask_utils.decode(ours[key]).astype(bool), mask_utils.decode(rle).astype(bool)
        agree = float((a == b).mean())
        worst, total, agree_all = min(worst, agree), total + 1, agree_all + agree
        equal += int(np.array_equal(a, b))
        coverage += float(b.mean())
    verdict = "identical" if worst >= IDENTICAL else "DIFFERENT"
    return (
        f"{verdict}: pixel agreement {100 * agree_all / max(total, 1):.2f}% (worst mask "
        f"{100 * worst:.2f}%), {equal}/{total} masks equal (ref. masks cover "
        f"{100 * coverage / max(total, 1):.0f}%)"
    )


# ------------------------------------------------------------------ driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="micro at 128 px, 2 x 18 frames")
    parser.add_argument("--videos", type=int, default=None, help="default 8 (quick 2)")
    parser.add_argument("--frames", type=int, default=None, help="default 48 (quick 18)")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=None, help="video side (default image size)")
    parser.add_argument("--seed", type=int, default=1, help="random weights (reference scenario)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--videos-per-step", type=int, default=1, help="the job's K")
    parser.add_argument(
        "--concurrent-videos",
        type=int,
        default=None,
        help="the job's actors.concurrent_videos (default: --threads, one torch thread each)",
    )
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    if args.quick:
        args.variant, args.image_size, args.seed = "micro", 128, 3
    # Videos longer than the 16-pointer window: the job streams without a frame count, and on
    # shorter videos SAM2 scales pointer positions by the video's length (the reference knows it).
    args.videos = args.videos or (2 if args.quick else 8)
    args.frames = args.frames or (18 if args.quick else 48)
    args.size = args.size or args.image_size
    args.concurrent_videos = args.concurrent_videos or args.threads
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "reference" not in sides or set(sides) - {*SIDES, NICE15, *SERIAL}:
        parser.error(f"--sides: reference plus any of {', '.join((*SIDES, NICE15, *SERIAL))}")
    print(machine_line(args.threads), flush=True)
    load_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    env = {**child_env(args.threads), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[1]), env.get("PYTHONPATH", "")])
    runs: list[tuple[int, str, dict]] = []
    masks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sgr-tp-", dir="/tmp") as tmp:
        folder = Path(tmp)  # short: Ray's socket paths live under it
        prepare(folder, args)
        for round_, side in interleaved_order(sides, args.rounds):
            out = folder / f"out-{side}-{round_}"
            result = run_side(side, folder, out, args, env)
            runs.append((round_, side, result))
            # Each run's figures as they come, so a later failure does not lose them.
            brief = {k: v for k, v in result.items() if k not in ("cpu", "cpu_window")}
            print(f"[archive] {json.dumps({'round': round_ + 1, 'side': side, **brief})}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if side not in masks:  # every round writes the same masks
                masks[side] = read_masks(out)
            print(f"[archive] round {round_ + 1} {side}: {result['frames']} frames in "
                  f"{result['wall_s']:.1f} s (process {result['process_s']:.1f} s), "
                  f"load {result['load']:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    print_tables(args, sides, runs, masks)
    load_end = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at start {load_start}, at end {load_end}; {machine_line(args.threads)}")
    return 0


def print_tables(args, sides, runs, masks) -> None:
    by_round: dict[int, dict[str, dict]] = {}
    for round_, side, result in runs:
        by_round.setdefault(round_, {})[side] = result
    per_run = []
    for round_, side, r in runs:
        ref = by_round[round_]["reference"]
        ratio = (r["frames"] / r["wall_s"]) / (ref["frames"] / ref["wall_s"])
        per_run.append([str(round_ + 1), side, f"{r['wall_s']:.1f}", f"{r['process_s']:.1f}",
                        f"{ratio:.2f}x", f"{r['load']:.1f}"])  # fmt: skip
    print_table("Runs in order", ["round", "side", "wall s", "process s", "vs reference (this round)",
                                  "load (1 min) after"], per_run)  # fmt: skip
    rows = []
    for side in sides:
        mine = [by_round[k][side] for k in sorted(by_round)]
        ratios = [
            (by_round[k][side]["frames"] / by_round[k][side]["wall_s"])
            / (by_round[k]["reference"]["frames"] / by_round[k]["reference"]["wall_s"])
            for k in sorted(by_round)
        ]
        wall = statistics.median(r["wall_s"] for r in mine)
        frames = mine[0]["frames"]
        rows.append(
            [
                side,
                str(frames),
                f"{wall:.1f}",
                f"{frames / wall:.3f}",
                f"{statistics.median(ratios):.2f}x",
                f"{statistics.median(r['process_s'] for r in mine):.1f}",
                f"{max(r['tree_rss'] for r in mine) / MB:.0f}",
                f"{max(r['tree_pss'] for r in mine) / MB:.0f}",
                f"{max(r['largest_rss'] for r in mine) / MB:.0f}",
                f"{max(r['processes'] for r in mine)}",
                f"{statistics.median(sum(c for _, c in r['cpu']) for r in mine):.0f}",
                f"{statistics.median(r['cpu'][0][1] for r in mine):.0f}",
                "reference" if side == "reference" else compare(masks[side], masks["reference"]),
            ]
        )
    title = (
        f"Archive throughput: {args.videos} videos x {args.frames} frames at {args.size}x"
        f"{args.size}, {args.objects} box-prompted objects, {args.variant} at {args.image_size}px,"
        f" random weights (seed {args.seed}), {args.threads} threads, {args.rounds} round(s);"
        f" the job's actor runs {args.concurrent_videos} videos at once (`-serial`: 1)"
    )
    header = ["side", "frames", "wall s", "frames/s", "vs reference", "process s",
              "peak tree RSS MB", "peak tree PSS MB", "largest process RSS MB", "processes", "CPU s (tree)",
              "CPU s (busiest process)", "masks"]  # fmt: skip
    print_table(title, header, rows)
    # Where the job's CPU goes besides the model: the last round's processes, busiest first.
    last = max(by_round)
    cpu_rows = []
    for side in sides:
        result = by_round[last][side]
        window: dict[str, float] = {}
        for name, seconds in result["cpu_window"]:
            window[name] = window.get(name, 0.0) + seconds
        for name, seconds in result["cpu"][:6]:
            inside = window.get(name)
            cpu_rows.append(
                [side, name, f"{seconds:.1f}", "-" if inside is None else f"{inside:.1f}"]
            )
        share = sum(window.values()) / max(result["wall_s"], 1e-9)
        cpu_rows.append([side, "(all, during the wall time)", "", f"{sum(window.values()):.1f} "
                         f"({share:.2f} cores busy)"])  # fmt: skip
    print_table(f"CPU seconds by process (round {last + 1}, busiest 6 per side)",
                ["side", "process (command line)", "CPU s (whole run)",
                 "CPU s (first open to last row)"], cpu_rows)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
