"""`surgray demo`: the whole annotation pipeline on a generated surgical clip, on a local Ray.

1. Generates a seeded synthetic surgical clip (instruments, tissue, an instrument leaving and
   coming back, occlusion, smoke) with its ground truth.
2. Writes the clip as MP4 and a manifest that prompts every object visible on the first frame
   with its ground-truth mask (the semi-supervised VOS protocol of SurgSAM2).
3. Runs the annotation job (`surgray.annotate`, Ray Data + an actor pool) on a local Ray.
4. Scores the masks against the ground truth (J, F, J&F) and prints where everything is.

Weights: the shipped demo checkpoint when the package has one (`surgray/assets/demo/`), else a
random-weight micro model, and the demo says so: its masks are then meaningless, the run
still exercises every stage for real.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEMO_ASSETS = Path(__file__).parent / "assets" / "demo"
DEMO_CHECKPOINT = DEMO_ASSETS / "model.pt"
VIDEO_ID = "synthetic-case-0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic clip")
    parser.add_argument("--frames", type=int, default=48, help="frames in the clip")
    parser.add_argument("--size", type=int, default=256, help="clip height and width")
    parser.add_argument("--policy", default="recent", help="memory policy (recent, prune, ...)")


def _first_frame_prompts(clip) -> list[dict]:
    from surgray.io.masks import encode_rle

    objects = []
    for info in clip.objects:
        mask = clip.masks[0] == info.obj_id
        if mask.any():
            rle = encode_rle(mask[None].astype(bool))[0]
            objects.append(
                {
                    "obj_id": int(info.obj_id),
                    "label": info.category,
                    "frame": 0,
                    "mask_rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
                }
            )
    if not objects:
        raise RuntimeError("the synthetic clip has no object on its first frame")
    return objects


def _write_inputs(args: argparse.Namespace) -> tuple[Path, Path, Path, int]:
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_folder, write_clip_video

    clip = generate_clip(
        SyntheticClipConfig(num_frames=args.frames, height=args.size, width=args.size),
        seed=args.seed,
    )
    video = args.out / "videos" / f"{VIDEO_ID}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    write_clip_video(clip, str(video))
    ground_truth = args.out / "ground_truth"
    write_clip_folder(clip, str(ground_truth), VIDEO_ID)
    objects = _first_frame_prompts(clip)
    manifest = args.out / "manifest.jsonl"
    row = {"video_uri": str(video.resolve()), "video_id": VIDEO_ID, "prompts": {"objects": objects}}
    manifest.write_text(json.dumps(row) + "\n")
    return video, ground_truth, manifest, len(objects)


def _checkpoint(args: argparse.Namespace, image_size: int) -> tuple[str, str, bool]:
    """(variant, checkpoint path, trained?)."""
    if DEMO_CHECKPOINT.exists():
        from surgray.model.checkpoint import read_state_dict

        _, metadata = read_state_dict(str(DEMO_CHECKPOINT))
        return (metadata or {}).get("variant", "micro"), str(DEMO_CHECKPOINT), True
    import torch

    from surgray.model.checkpoint import build_model, save_checkpoint

    path = args.out / "checkpoints" / "random_micro.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(build_model("micro", image_size=image_size), str(path))
    return "micro", str(path), False


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from surgray.annotate.config import AnnotateConfig
    from surgray.annotate.pipeline import connect_ray, run_annotate
    from surgray.eval.evaluate import RESURGSAM2_PROTOCOL, evaluate
    from surgray.eval.sources import open_predictions, video_inputs

    args.out = args.out.resolve()
    started = time.monotonic()
    image_size = 128
    video, ground_truth, manifest, num_objects = _write_inputs(args)
    variant, checkpoint, trained = _checkpoint(args, image_size)
    print(f"[demo] synthetic clip: {video} ({args.frames} frames, {num_objects} objects)")
    if not trained:
        print(
            "[demo] NOTE: no trained demo checkpoint is shipped yet; this run uses a RANDOM-WEIGHT "
            "micro model, so the masks and the J&F below are meaningless. Every stage (decode, "
            "Ray Data actor pool, tracking, Parquet/RLE output, exports, scoring) runs for real."
        )
    annotations = args.out / "annotations"
    config = AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": str(manifest)},
            "output": {"prefix": str(annotations)},
            "model": {
                "variant": variant,
                "checkpoint": checkpoint,
                "image_size": image_size,
                "policy": args.policy,
            },
            "actors": {"count": 1, "num_cpus": 0.5},
            "privacy": {"hash_video_ids": False},
            "exports": ["parquet", "overlay_mp4", "davis"],
        },
        source="surgray demo",
    )
    started_ray = connect_ray(num_cpus=2)
    try:
        outcome = run_annotate(config)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print("[demo] " + outcome.report())
    if outcome.summary.failed:
        return 1
    report = evaluate(
        video_inputs(ground_truth, open_predictions(annotations / "masks")), RESURGSAM2_PROTOCOL
    )
    print(report.to_table())
    print(f"[demo] masks (Parquet, RLE): {annotations / 'masks'}")
    for path in sorted((annotations / "exports").rglob("*.mp4")):
        print(f"[demo] overlay video: {path}")
    print(f"[demo] ground truth: {ground_truth}")
    print(f"[demo] done in {time.monotonic() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surgray demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
