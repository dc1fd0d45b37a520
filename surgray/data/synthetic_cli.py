"""`surgray synth`: write a seeded synthetic surgical video dataset to a folder or URI."""

from __future__ import annotations

import argparse
import math
import os

from surgray.data.synthetic_plan import SyntheticClipConfig
from surgray.data.synthetic_writers import LAYOUTS, make_synthetic_dataset
from surgray.errors import UserError, one_line

MAX_FPS = 1000.0


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


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse what would fail (or write nonsense) part-way, before anything is generated."""
    if not math.isfinite(args.fps) or not 0 < args.fps <= MAX_FPS:
        raise UserError(f"--fps must be a number in (0, {MAX_FPS:g}], got {args.fps:g}")
    if not math.isfinite(args.valid_fraction) or not 0 <= args.valid_fraction <= 1:
        raise UserError(f"--valid-fraction must be in [0, 1], got {args.valid_fraction:g}")
    for name in ("num_videos", "frames", "height", "width"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be >= 1, got {getattr(args, name)}")
    if "://" not in args.out or args.out.startswith("file://"):
        local = args.out.removeprefix("file://")
        if os.path.exists(local) and not os.path.isdir(local):
            raise UserError(f"{args.out} is an existing file; give a folder (new or existing)")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
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
        raise UserError(one_line(exc)) from None
    except (FileExistsError, NotADirectoryError, PermissionError, IsADirectoryError) as exc:
        where = exc.filename or args.out
        raise UserError(f"cannot write under {args.out}: {where}: {exc.strerror}") from None
    train, valid = len(dataset.split("train")), len(dataset.split("valid"))
    print(
        f"wrote {len(dataset.videos)} clips ({train} train, {valid} valid) as {args.layout} to {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m surgray.data.synthetic_cli ...`: the same as `surgray synth ...`."""
    import sys

    from surgray.cli import main as surgray_main

    return surgray_main(["synth", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
