"""Archive throughput (issue 26, item 2): surgray's annotate job against the loop a user of
Meta's reference would write, on the same archive, in one run.

The archive: N synthetic surgical videos (MP4 on disk, seeded), 3 objects each prompted by a
box on frame 0 (the ground truth's largest objects), the reference scenario's network
(Hiera-T at 512 px, random weights of seed 1: throughput and agreement only).

Sides, each a fresh process (2 torch threads, OMP_WAIT_POLICY=PASSIVE, niced alike):
- `reference`: a plain loop over `SAM2VideoPredictor` (sam2 1.1.0) as its README teaches:
  per video, frames extracted from the MP4 to a folder (PyAV; without decord, which this
  machine lacks, the reference's `init_state` reads only JPEG folders; the frames are written
  losslessly, PNG data under .jpg names, which its PIL loader opens by content, so both sides
  see the same pixels), `init_state`, `add_new_points_or_box` per object,
  `propagate_in_video`, every mask RLE-encoded with pycocotools and the video's rows written
  to one Parquet file.
- `exact` / `fast`: surgray's annotate job with `model.precision` fp32 / fast, run in one
  process without Ray (`prepare_job` then the actor's `SegmentAnnotator.annotate_rows`: the
  job's own decode, tracking, RLE and Parquet parts; Ray's scheduling is not counted, so
  this is the rate of one actor).
Hole filling is off on every side: the reference's needs its CUDA extension and skips it on
CPU, so surgray's default fill is switched off for comparable masks.

Wall time runs from the first video opened to the last row written (model loading excluded on
every side); peak memory is the worker process's high-water mark (VmHWM, model included).
Masks are compared with the reference's row by row (frame, object): `identical` means every
mask agrees on >= 99.9% of its pixels.

    .venv/bin/python benchmarks/bench_archive_throughput.py                 # 8 x 48 frames
    .venv/bin/python benchmarks/bench_archive_throughput.py --videos 2 --frames 16
    .venv/bin/python benchmarks/bench_archive_throughput.py --quick         # micro, seconds
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
    machine_line,
    peak_rss,
    pin_threads,
    print_table,
    run_worker,
)

add_repo_paths()
SCRIPT = Path(__file__).resolve()
SIDES = ("reference", "exact", "fast")
IDENTICAL = 0.999


# ------------------------------------------------------------------ the archive
def model_config(args):
    from surgray.model.checkpoints.variants import get_variant, micro_config

    if args.variant == "micro":
        return micro_config(args.image_size)
    return get_variant(args.variant, image_size=args.image_size)


def prepare(folder: Path, args) -> None:
    """Videos, manifest, weights (reference state dict and a surgray checkpoint)."""
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


# ------------------------------------------------------------------ workers
def reference_worker(folder: Path, out: Path) -> dict:
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from pycocotools import mask as mask_utils
    from sam2_reference import build_reference

    from surgray.model.sam2.config import ModelConfig

    cfg = ModelConfig.model_validate_json((folder / "config.json").read_text())
    predictor = build_reference(cfg, video=True)
    predictor.load_state_dict(torch.load(folder / "weights.pt", weights_only=True), strict=True)
    predictor.fill_hole_area = 0  # needs sam2's CUDA extension: skipped on CPU anyway
    tasks = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    out.mkdir(parents=True)
    frames = 0
    started = time.perf_counter()
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
    wall = time.perf_counter() - started
    return {"frames": frames, "wall_s": wall, "peak_rss": peak_rss()}


def surgray_worker(folder: Path, out: Path, precision: str, threads: int) -> dict:
    from surgray.annotate.actor import SegmentAnnotator
    from surgray.annotate.config import AnnotateConfig
    from surgray.annotate.driver import prepare_job
    from surgray.model.sam2.config import ModelConfig

    cfg = ModelConfig.model_validate_json((folder / "config.json").read_text())
    variant = "micro" if cfg.image_encoder.trunk.embed_dim < 96 else "sam2.1_hiera_tiny"
    config = AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": str(folder / "manifest.jsonl")},
            "output": {"prefix": str(out)},
            "model": {
                "variant": variant,
                "checkpoint": str(folder / "model.pt"),
                "image_size": cfg.image_size,
                "policy": "recent",
                "precision": precision,
            },
            "actors": {"count": 1, "num_cpus": threads, "torch_threads": threads},
            "privacy": {"hash_video_ids": False},
            "exports": ["parquet"],
        },
        source=f"bench_archive_throughput {precision}",
    )
    annotator = SegmentAnnotator(config, postprocess={"fill_hole_area": 0}, device="cpu")
    started = time.perf_counter()
    plan = prepare_job(config)
    results = annotator.annotate_rows(plan.rows)
    wall = time.perf_counter() - started
    failed = [r for r in results if getattr(r, "error", None)]
    if failed:
        raise RuntimeError(f"{len(failed)} work items failed: {failed[0]}")
    frames = sum(int(getattr(r, "frames", 0)) for r in results)
    return {"frames": frames, "wall_s": wall, "peak_rss": peak_rss()}


def worker_main(args) -> None:
    pin_threads(args.threads)
    folder, out = Path(args.folder), Path(args.out)
    if args.worker == "reference":
        result = reference_worker(folder, out)
    else:
        result = surgray_worker(folder, out, "fp32" if args.worker == "exact" else "fast",
                                args.threads)  # fmt: skip
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ masks
def read_masks(out: Path) -> dict[tuple[str, int, int], dict]:
    """(video_id, frame, obj) -> RLE, from every Parquet file under `out`."""
    import pyarrow.parquet as pq

    masks = {}
    for path in sorted(out.rglob("*.parquet")):
        video_id = next(p for p in path.parts if p.startswith("video_id=")).split("=", 1)[1]
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
    worst, total, equal, coverage = 1.0, 0, 0, 0.0
    for key, rle in reference.items():
        a, b = mask_utils.decode(ours[key]).astype(bool), mask_utils.decode(rle).astype(bool)
        agree = float((a == b).mean())
        worst, total = min(worst, agree), total + 1
        equal += int(np.array_equal(a, b))
        coverage += float(b.mean())
    verdict = "identical" if worst >= IDENTICAL else "DIFFERENT"
    return (
        f"{verdict}: worst pixel agreement {100 * worst:.2f}%, {equal}/{total} masks equal "
        f"(ref. masks cover {100 * coverage / max(total, 1):.0f}%)"
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
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
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
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "reference" not in sides or set(sides) - set(SIDES):
        parser.error(f"--sides: reference plus any of {', '.join(SIDES)}")
    print(machine_line(args.threads), flush=True)
    load_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="surgray-archive-") as tmp:
        folder = Path(tmp)
        prepare(folder, args)
        results, masks = {}, {}
        for side in sides:
            out = folder / f"out-{side}"
            worker_args = ["--worker", side, "--folder", str(folder), "--out", str(out),
                           "--threads", str(args.threads), "--result", str(folder / f"{side}.json")]  # fmt: skip
            results[side] = run_worker(SCRIPT, worker_args, args.threads, args.timeout)
            masks[side] = read_masks(out)
            print(f"[archive] {side}: {results[side]['frames']} frames in "
                  f"{results[side]['wall_s']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    ref = results["reference"]
    ref_fps = ref["frames"] / ref["wall_s"]
    rows = []
    for side in sides:
        r = results[side]
        fps = r["frames"] / r["wall_s"]
        rows.append(
            [
                side,
                str(r["frames"]),
                f"{r['wall_s']:.1f}",
                f"{fps:.3f}",
                f"{fps / ref_fps:.2f}x",
                f"{r['peak_rss'] / MB:.0f}",
                "reference" if side == "reference" else compare(masks[side], masks["reference"]),
            ]
        )
    title = (
        f"Archive throughput: {args.videos} videos x {args.frames} frames at {args.size}x"
        f"{args.size}, {args.objects} box-prompted objects, {args.variant} at {args.image_size}px,"
        f" random weights (seed {args.seed}), {args.threads} threads"
    )
    header = ["side", "frames", "wall s", "frames/s", "vs reference", "peak RSS MB", "masks"]
    print_table(title, header, rows)
    load_end = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at start {load_start}, at end {load_end}; {machine_line(args.threads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
