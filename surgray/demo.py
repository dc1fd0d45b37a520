"""`surgray demo`: the annotation job on a generated surgical clip, prompted by text and by masks.

1. Generates a seeded synthetic surgical clip (instruments, tissue, an instrument leaving and
   coming back, occlusion, smoke) with its ground truth and one referring expression per object.
2. Starts a local Ray once and runs the annotation job (`surgray.annotate`: Ray Data + an actor
   pool) twice on the clip, each run in its own folder:
   text  the manifest row gives the clip's referring expressions (ReSurgSAM2: the model finds
         each object from its expression, then tracks it);
   mask  the manifest row prompts every object visible on the first frame with its
         ground-truth mask (the semi-supervised protocol of SurgSAM2).
3. Scores each run against the ground truth (J, F, J&F over all frames, first and last
   included: ReSurgSAM2's protocol, not SurgSAM2's skip-first-and-last) and prints where the
   masks and exports are, and the `surgray eval` command that gives the same scores. Each
   expression carries the ground-truth id of its object, so every output uses those ids.

Weights: `--checkpoint`, else the shipped referring checkpoint (`assets/demo/referring.pt`:
text and masks), else the shipped mask-only one (`assets/demo/model.pt`; the text run is then
skipped, and the demo says so), else a random-weight micro model, announced loudly: its masks
are meaningless, but every stage still runs for real.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgray.errors import UserError, one_line

PROMPT_CHOICES = ("both", "text", "mask")
EXIT_FAILED, EXIT_UNUSABLE = 1, 2
MIN_FRAMES, MIN_SIZE, MAX_SIZE = 2, 32, 4096  # the synthetic generator's bounds (and sanity)


class DemoArgumentError(UserError):
    """An argument of `surgray demo` cannot be used; the message names it."""


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse unusable arguments before any work (one line, exit 2 from the CLI)."""
    if args.frames < MIN_FRAMES:
        raise DemoArgumentError(
            f"--frames {args.frames}: the clip needs at least {MIN_FRAMES} frames"
        )
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        raise DemoArgumentError(
            f"--size {args.size}: give a frame side between {MIN_SIZE} and {MAX_SIZE} pixels"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic clip")
    parser.add_argument("--frames", type=int, default=48, help="frames in the clip")
    parser.add_argument("--size", type=int, default=256, help="clip height and width")
    parser.add_argument("--policy", default="recent", help="memory policy (recent, prune, ...)")
    parser.add_argument(
        "--prompt", choices=PROMPT_CHOICES, default="both",
        help="prompt the objects by text, by first-frame masks, or both (two runs; default)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="checkpoint to run (default: the shipped demo checkpoint)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-bars", action="store_true",
        help="show Ray Data's per-operator progress bars (default: one line per finished video)",
    )  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    prompt: str  # "text" or "mask"
    prefix: Path  # the run's output folder
    outcome: Any  # surgray.annotate.driver.JobOutcome
    report: Any = None  # surgray.eval.report.EvaluationReport, None when the run failed


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _fresh(prefix: Path) -> Path:
    """An empty run folder: a demo run's earlier outputs are removed (a rerun would otherwise
    skip the video as complete, even when the clip changed)."""
    if prefix.is_dir() and ((prefix / "_summary.json").exists() or (prefix / "masks").is_dir()):
        shutil.rmtree(prefix)
    return prefix


def _config(args: argparse.Namespace, weights: Any, manifest: Path, prefix: Path) -> Any:
    from surgray.annotate.config import AnnotateConfig

    return AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": str(manifest)},
            "output": {"prefix": str(prefix)},
            "model": {
                "variant": weights.variant,
                "checkpoint": weights.checkpoint,
                "image_size": weights.image_size,
                "policy": args.policy,
            },
            "actors": {"count": 1, "num_cpus": 0.5},
            "privacy": {"hash_video_ids": False},
            "exports": ["parquet", "overlay_mp4", "davis"],
        },
        source="surgray demo",
    )


def _prompts(args: argparse.Namespace, weights: Any) -> list[str]:
    """The runs to make, in order; `DemoArgumentError` when the asked-for run is impossible."""
    wanted = ["text", "mask"] if args.prompt == "both" else [args.prompt]
    if "text" in wanted and not weights.takes_text:
        reason = (
            f"the {weights.description} has no text tower (it is not a referring checkpoint "
            "with an embedded CLIP text tower or a text encoder folder)"
        )
        if args.prompt == "text":
            raise DemoArgumentError(f"--prompt text needs text prompts, but {reason}")
        _say(f"NOTE: the TEXT RUN IS SKIPPED: {reason}. Only the mask run follows.")
        wanted.remove("text")
    return wanted


def _run_jobs(jobs: list[tuple[str, Path, Any]], progress_bars: bool) -> list[RunResult]:
    """Run each (prompt, prefix, config) job in turn on one Ray (started here unless this
    process is connected already, or RAY_ADDRESS names a cluster)."""
    from surgray.annotate.pipeline import connect_ray, run_annotate

    started_ray = connect_ray(num_cpus=2)
    results = []
    try:
        for prompt, prefix, config in jobs:
            _say(f"{prompt} run: annotating into {prefix}")
            # One progress line per video; Ray Data's bars only with --progress-bars.
            outcome = run_annotate(config, progress_bars=progress_bars)
            _say(f"{prompt} run: " + outcome.report())
            results.append(RunResult(prompt, prefix, outcome))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return results


def _annotate(args: argparse.Namespace, weights: Any, clip: Any, prompts: list[str]) -> list:
    from surgray.demo_inputs import PROTOCOL_NAME, SCORES_FILE, score_run, write_manifest

    jobs = []
    for prompt in prompts:
        manifest = write_manifest(args.out / f"manifest_{prompt}.jsonl", clip, prompt)
        prefix = _fresh(args.out / prompt)
        jobs.append((prompt, prefix, _config(args, weights, manifest, prefix)))
    scored = []
    for result in _run_jobs(jobs, args.progress_bars):
        report = None
        if not result.outcome.summary.failed:
            report = score_run(clip.ground_truth, result.prefix / "masks")
            report.to_json(result.prefix / SCORES_FILE)  # what `surgray eval` writes, to compare
            _say(f"{result.prompt} run, scored against the ground truth ({PROTOCOL_NAME}):")
            print(report.to_table(), flush=True)
        scored.append(RunResult(result.prompt, result.prefix, result.outcome, report))
    return scored


def _summary(result: RunResult, clip: Any) -> list[str]:
    from surgray.demo_inputs import VIDEO_ID, eval_command

    if result.prompt == "text":
        prompted = "; ".join(f"{text!r} (obj {obj})" for text, obj in clip.expressions.items())
    else:
        prompted = ", ".join(f"obj {o['obj_id']} {o['label']}" for o in clip.mask_objects)
    if result.report is None:
        head = f"{result.prompt} run: FAILED, see the report above"
    else:
        s = result.report.overall
        head = (
            f"{result.prompt} run: J&F {100 * s.jf:.1f} (J {100 * s.j:.1f}, F {100 * s.f:.1f}) "
            f"over {s.objects} objects, {s.frames} frames (all frames scored, first and last "
            "included)"
        )
    exports = result.prefix / "exports"
    return [
        head,
        f"  prompts: {prompted}",
        f"  masks (Parquet, RLE): {result.prefix / 'masks'}",
        f"  overlay video: {exports / 'overlay_mp4' / f'{VIDEO_ID}.mp4'}",
        f"  DAVIS PNGs: {exports / 'davis' / VIDEO_ID}",
        f"  the same scores: {eval_command(clip.ground_truth, result.prefix / 'masks')}",
    ]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from surgray.demo_inputs import choose_weights, write_clip
    from surgray.model.checkpoints.sam2_checkpoint import CheckpointError

    started = time.monotonic()
    check_arguments(args)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        weights = choose_weights(args.out, args.checkpoint)
    except (OSError, ValueError, CheckpointError) as exc:
        raise DemoArgumentError(str(exc)) from exc
    prompts = _prompts(args, weights)
    if not weights.trained:
        _say(
            "NOTE: no demo checkpoint is shipped; this run uses a RANDOM-WEIGHT micro model, so "
            "the masks and the J&F below are meaningless. Every stage (decode, Ray Data actor "
            "pool, tracking, Parquet/RLE output, exports, scoring) runs for real."
        )
    _say(f"weights: {weights.description} ({weights.checkpoint}, {weights.image_size} px)")
    clip = write_clip(args.out, args.frames, args.size, args.seed)
    _say(
        f"synthetic clip: {clip.video} ({clip.num_frames} frames, {len(clip.expressions)} "
        f"objects, {len(clip.mask_objects)} on the first frame)"
    )
    if clip.events_off:
        _say(f"short clip: no room for {', '.join(clip.events_off)}; those events are off")
    results = _annotate(args, weights, clip, prompts)
    _say("summary")
    if "text" not in prompts and args.prompt != "mask":
        _say("text run: SKIPPED (the checkpoint has no text tower)")
    for result in results:
        for line in _summary(result, clip):
            _say(line)
    _say(f"ground truth: {clip.ground_truth}")
    _say(f"done in {time.monotonic() - started:.0f} s")
    return EXIT_FAILED if any(r.report is None for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surgray demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as exc:  # as the `surgray` command reports it: one line, exit 2
        print(f"surgray demo: {one_line(exc)}", file=sys.stderr)
        return EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
