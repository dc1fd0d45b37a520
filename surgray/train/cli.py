"""`surgray train`: fine-tune on Ray Train from a YAML config (see configs/train_*.yaml).

    surgray train --config configs/train_demo.yaml
    surgray train --config configs/train_demo.yaml --set schedule.epochs=2 --check-only
    ray job submit --working-dir . -- python jobs/train.py --config configs/train_demo.yaml
    surgray train --config configs/train_demo.yaml --max-steps 20   # a short run

`--set section.key=value` overrides one value (the value is read as YAML: numbers, booleans,
lists). Checks run first (config keys, dataset, storage, initial weights); `--check-only` stops
there. `--export PATH` copies the final model (our checkpoint format) to PATH.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from surgray.io.storage import Storage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. schedule.epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--check-only", action="store_true", help="check config, data and storage, then exit"
    )
    parser.add_argument(
        "--address", help="Ray cluster address (default: the job's cluster, or a local one)"
    )
    parser.add_argument("--export", help="copy the final model.pt to this path or URI")
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="a short run: one epoch of N steps instead of the config's schedule (to try a "
        "config end to end; same as --set schedule.epochs=1 --set schedule.steps_per_epoch=N)",
    )
    parser.add_argument(
        "--evaluate",
        metavar="CHECKPOINT",
        help="do not train: score CHECKPOINT (model.pt or a checkpoint folder) and the trivial "
        "baselines on --eval-split of the config's data, from first-frame masks (and from "
        "text for referring models)",
    )
    parser.add_argument("--eval-split", default="test", help="split to score (default test)")
    parser.add_argument("--eval-videos", type=int, default=16)
    parser.add_argument("--eval-frames", type=int, default=24)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` assignments applied to nested plain data (values parsed as YAML)."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. schedule.epochs=3")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ValueError(f"--set {item!r}: empty key")
        target = data
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
            target = child
        target[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str, overrides: list[str]):
    from surgray.config import load_yaml_mapping
    from surgray.train.config import TrainConfig, TrainConfigError, parse_train_config

    if not overrides:
        return TrainConfig.from_yaml(path)
    data = load_yaml_mapping(path, TrainConfigError) or {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return parse_train_config(apply_overrides(data, overrides), source=path)


def export_model(checkpoint, destination: str, *, storage: Storage) -> None:
    """Copy `model.pt` of a Ray checkpoint to a path or URI."""
    from surgray.train.checkpoints import MODEL_FILE

    with checkpoint.as_directory() as folder:
        with open(f"{folder}/{MODEL_FILE}", "rb") as source:
            payload = source.read()
    storage.write_bytes(destination, payload)


ROW_NAMES = {
    "model": "checkpoint, mask prompt",
    "text": "checkpoint, text prompt",
    "repeat_first": "repeat first-frame mask",
    "empty": "predict nothing",
    "same_kind": "all of its kind (oracle)",
}


def evaluate_checkpoint(args: argparse.Namespace, config) -> int:
    import time

    from surgray.train.checkpoints import load_trained_model
    from surgray.train.clip_data import open_videos
    from surgray.train.validation import compare_with_baselines

    started = time.monotonic()
    storage = config.storage.build()
    model = load_trained_model(args.evaluate, storage=storage)
    videos = open_videos(config.data, args.eval_split, storage=storage)
    results = compare_with_baselines(videos, model, args.eval_videos, args.eval_frames)
    for name, result in results.items():
        skipped = f", {result.skipped_objects} without text" if result.skipped_objects else ""
        kinds = f"; by kind: {result.describe_kinds()}" if result.by_kind else ""
        print(
            f"{ROW_NAMES[name]:>24}: J&F {result.jf:.4f}  J {result.j:.4f}  F {result.f:.4f}  "
            f"({result.videos} videos, {result.objects} objects, {result.frames} frames{skipped})"
            f"{kinds}"
        )
    margin = results["model"].jf - max(results["repeat_first"].jf, results["empty"].jf)
    print(
        f"margin of the mask prompt over the best baseline: {margin:+.4f} "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from surgray.data.files import DatasetError
    from surgray.errors import one_line
    from surgray.train.config import TrainConfigError
    from surgray.train.preflight import PreflightError, preflight

    overrides = list(args.overrides)
    if args.max_steps is not None:
        if args.max_steps < 1:
            print(f"surgray train: --max-steps {args.max_steps}: give at least 1", file=sys.stderr)
            return 2
        overrides += ["schedule.epochs=1", f"schedule.steps_per_epoch={args.max_steps}"]
    try:
        config = load_config(args.config, overrides)
        if args.address:
            config = config.model_copy(
                update={"scaling": config.scaling.model_copy(update={"address": args.address})}
            )
        if args.evaluate:
            return evaluate_checkpoint(args, config)
        report = preflight(config)
    except (TrainConfigError, PreflightError, DatasetError, ValueError) as exc:
        print(f"surgray train: {one_line(exc)}", file=sys.stderr)
        return 2
    print(
        f"surgray train: checks passed ({report.train_videos} training videos, "
        f"{report.annotated_frames} annotated frames, {report.valid_videos} validation videos)",
        flush=True,
    )
    if args.check_only:
        return 0
    from surgray.train.run import run_training

    outcome = run_training(config, check=False)
    result = outcome.result
    if result.error is not None:
        print(f"surgray train: training failed: {result.error}", file=sys.stderr)
        return 1
    print(f"surgray train: done; final metrics {outcome.metrics}", flush=True)
    print(f"surgray train: latest checkpoint {outcome.checkpoint_path}", flush=True)
    if args.export and result.checkpoint is not None:
        export_model(result.checkpoint, args.export, storage=config.storage.build())
        print(f"surgray train: model exported to {args.export}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`jobs/*.py` and `python -m`: the same as `surgray train ...` (one-line errors, exit 2)."""
    from surgray.cli import main as surgray_main

    return surgray_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
