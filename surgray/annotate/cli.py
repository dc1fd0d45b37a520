"""`surgray annotate --config CONFIG.yaml`: the archive annotation job from the command line.

On a laptop it starts a local Ray (or joins `--ray-address` / `RAY_ADDRESS`), runs the job,
prints a summary and exits 0; 2 when the configuration or the inputs are unusable, 1 when
every video failed (`surgray.annotate.status.exit_code`). `jobs/annotate.py` calls the same
`main` for `ray job submit`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from surgray.annotate.status import EXIT_INVALID_CONFIG, exit_code
from surgray.errors import one_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="annotate config YAML (see configs/)")
    parser.add_argument(
        "--ray-address", default=None,
        help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)",
    )  # fmt: skip
    parser.add_argument(
        "--num-cpus", type=int, default=None,
        help="CPUs of the local Ray this command starts (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--ray-temp-dir", default=None, help="session folder of the local Ray (default /tmp/ray)"
    )
    parser.add_argument(
        "--output", default=None, metavar="PREFIX",
        help="write under PREFIX instead of the config's output.prefix (a folder or s3:// "
        "prefix; inside `ray job submit` a relative path is in the job's working directory)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.add_argument(
        "--progress-bars", action="store_true",
        help="show Ray Data's per-operator progress bars (default: one line per finished video)",
    )  # fmt: skip


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("surgray").setLevel(logging.WARNING if quiet else logging.INFO)


def _where(prefix: str) -> str:
    """The output prefix as a user can find it: local folders as absolute paths."""
    from surgray.io.storage import is_local, local_path

    return str(local_path(prefix).resolve()) if is_local(prefix) else prefix


def run(args: argparse.Namespace) -> int:
    from surgray.annotate.config import AnnotateConfig, ConfigError
    from surgray.errors import UserError

    _setup_logging(args.quiet)
    try:
        config = AnnotateConfig.from_yaml(args.config)
    except ConfigError as exc:
        print(f"surgray annotate: {one_line(exc)}", file=sys.stderr)
        return EXIT_INVALID_CONFIG

    if args.output:
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"prefix": args.output})}
        )

    from surgray.annotate.driver import prepare_job
    from surgray.annotate.pipeline import connect_ray, execute

    try:
        # Bad inputs, checkpoints, variants and outputs are reported before Ray starts
        # (surgray.annotate.preflight); a missing package is named as such.
        plan = prepare_job(config)
    except UserError as exc:
        print(f"surgray annotate: {one_line(exc)}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    # Nothing to track (all complete, rejected or unreadable): no need to start Ray.
    started = bool(plan.rows) and connect_ray(
        args.ray_address, num_cpus=args.num_cpus, temp_dir=args.ray_temp_dir
    )
    try:
        outcome = execute(plan, progress_bars=args.progress_bars)
    finally:
        if started:
            import ray

            ray.shutdown()
    print(outcome.report())
    print(f"outputs under {_where(config.output.prefix)}")
    return exit_code(outcome.summary)


def main(argv: list[str] | None = None) -> int:
    """`jobs/*.py` and `python -m`: the same as `surgray annotate ...` (one-line errors, exit 2)."""
    from surgray.cli import main as surgray_main

    return surgray_main(["annotate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
