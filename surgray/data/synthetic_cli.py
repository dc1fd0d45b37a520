"""`surgray synth`: write a seeded synthetic surgical video dataset to a folder or URI."""

from __future__ import annotations

import argparse
import sys

from surgray.data.synthetic_plan import SyntheticClipConfig
from surgray.data.synthetic_writers import LAYOUTS, make_synthetic_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder or fsspec URI (e.g. s3://bucket/synth)")
    parser.add_argument(
        "-n", "--num-videos", type=int, default=8, help="clips to write (default 8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="ref-endovis",
        help="ref-endovis (PNG frames + Meta + expressions), davis (JPEG + palette PNGs), "
        "sav (MP4 + SA-V JSON masklets) or mp4 (videos only); default ref-endovis",
    )
    parser.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--fps", type=float, default=24.0, help="frame rate of MP4 outputs")
    parser.add_argument("--valid-fraction", type=float, default=0.25)
    parser.add_argument(
        "--no-vary",
        action="store_true",
        help="every clip uses the same settings (2 instruments, 1 tissue, all events)",
    )
    for event in ("leave-and-return", "occlusion", "smoke", "motion-blur"):
        parser.add_argument(f"--no-{event}", action="store_true", help=f"never draw {event}")


def run(args: argparse.Namespace) -> int:
    try:
        config = SyntheticClipConfig(
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            fps=args.fps,
            leave_and_return=not args.no_leave_and_return,
            occlusion=not args.no_occlusion,
            smoke=not args.no_smoke,
            motion_blur=not args.no_motion_blur,
        )
        dataset = make_synthetic_dataset(
            args.out,
            args.num_videos,
            seed=args.seed,
            layout=args.layout,
            valid_fraction=args.valid_fraction,
            config=config,
            vary=not args.no_vary,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        print(f"surgray synth: {exc}", file=sys.stderr)
        return 2
    train, valid = len(dataset.split("train")), len(dataset.split("valid"))
    print(
        f"wrote {len(dataset.videos)} clips ({train} train, {valid} valid) as {args.layout} to {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surgray synth", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
