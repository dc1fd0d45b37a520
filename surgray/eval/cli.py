"""`surgray eval`: score predicted masks against DAVIS-style ground truth.

Prints a table (scores in percent) and writes ``eval_results.csv`` and ``eval_results.json``
(fractions) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from surgray.annotate.revisions import store_mask_table
from surgray.errors import UserError, one_line
from surgray.eval.evaluate import ENDOVIS18_ID_GROUPS, EvalOptions, IdGroup, evaluate
from surgray.eval.metrics import DAVIS_BOUNDARY_THRESHOLD
from surgray.eval.sources import open_predictions, video_inputs


def parse_id_group(text: str) -> IdGroup:
    """``NAME=1-10`` or ``NAME=11,12,17`` (ranges and lists may be mixed)."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=IDS (e.g. tissue=11,12,17), got {text!r}")
    ids: list[int] = []
    try:
        for part in spec.split(","):
            low, dash, high = part.strip().partition("-")
            ids.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad object ids in {text!r}") from None
    return IdGroup(name.strip(), tuple(ids))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gt", required=True, type=Path,
        help="ground truth: a DAVIS-style folder with Annotations/<video>/<frame>.png",
    )  # fmt: skip
    parser.add_argument(
        "--pred", required=True, type=Path,
        help="predictions: a folder of <video>/<frame>.png palette PNGs, or a Parquet file/folder "
        "with columns video_id, frame_idx, obj_id, rle_counts, rle_size",
    )  # fmt: skip
    parser.add_argument(
        "--out-dir", type=Path, default=Path("."),
        help="where to write eval_results.csv and eval_results.json (default: .)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-first-last", action=argparse.BooleanOptionalAction, default=True,
        help="skip each video's first and last annotated frames (SurgSAM2 / SA-V; default); "
        "--no-skip-first-last scores them (ReSurgSAM2)",
    )  # fmt: skip
    parser.add_argument(
        "--count-frames", choices=("first_appearance", "all"), default="first_appearance",
        help="score an object from its first appearance in GT or prediction (surgical "
        "evaluators; default) or on every evaluated frame (DAVIS)",
    )  # fmt: skip
    parser.add_argument(
        "--id-group", action="append", type=parse_id_group, default=[], metavar="NAME=IDS",
        help="report a group of object ids on its own, e.g. tissue=11,12,17 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--endovis18-groups", action="store_true",
        help="shorthand for --id-group instrument=1-10 --id-group tissue=11,12,17",
    )  # fmt: skip
    parser.add_argument(
        "--missing", choices=("error", "empty"), default="error",
        help="a GT frame or video without a prediction: stop with an error (default) or score "
        "it as an empty prediction",
    )  # fmt: skip
    parser.add_argument(
        "--boundary-threshold", type=float, default=DAVIS_BOUNDARY_THRESHOLD,
        help="boundary F tolerance: fraction of the image diagonal (< 1) or pixels (>= 1)",
    )  # fmt: skip
    parser.add_argument("--videos", nargs="+", help="evaluate only these videos")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an unusable --out-dir before the (possibly long) scoring, not after it."""
    for parent in (out_dir, *out_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "--out-dir" if parent == out_dir else f"--out-dir's parent {parent}"
                raise UserError(f"{what} is an existing file, not a folder; give a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"--out-dir: cannot write in {parent} (permission denied)")
            return


def run(args: argparse.Namespace) -> int:
    _check_out_dir(args.out_dir)
    if not math.isfinite(args.boundary_threshold) or args.boundary_threshold <= 0:
        raise UserError(f"--boundary-threshold must be > 0, got {args.boundary_threshold:g}")
    groups = tuple(args.id_group)
    if args.endovis18_groups:
        groups += ENDOVIS18_ID_GROUPS
    try:
        options = EvalOptions(
            skip_first_and_last=args.skip_first_last,
            count_frames=args.count_frames,
            boundary_threshold=args.boundary_threshold,
            id_groups=groups,
        )
        predictions = open_predictions(args.pred, read_store=store_mask_table)
        videos = video_inputs(args.gt, predictions, missing=args.missing, videos=args.videos)
        report = evaluate(videos, options)
    except ValueError as error:  # EvalInputError, MaskFormatError, bad options
        raise UserError(one_line(error)) from None
    print(report.to_table())
    csv_path = args.out_dir / "eval_results.csv"
    json_path = args.out_dir / "eval_results.json"
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        report.to_csv(csv_path)
        report.to_json(json_path)
    except OSError as exc:  # the checks above leave only races and full disks
        where = exc.filename or args.out_dir
        raise UserError(f"--out-dir: cannot write {where}: {exc.strerror}") from None
    print(f"\nwrote {csv_path} and {json_path}")
    return 0
