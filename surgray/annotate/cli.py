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
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("surgray").setLevel(logging.WARNING if quiet else logging.INFO)


def run(args: argparse.Namespace) -> int:
    from surgray.annotate.config import AnnotateConfig, ConfigError
    from surgray.annotate.driver import JobSetupError

    _setup_logging(args.quiet)
    try:
        config = AnnotateConfig.from_yaml(args.config)
    except ConfigError as exc:
        print(f"surgray annotate: {one_line(exc)}", file=sys.stderr)
        return EXIT_INVALID_CONFIG

    from surgray.annotate.driver import prepare_job
    from surgray.annotate.pipeline import connect_ray, execute

    try:
        plan = prepare_job(config)  # bad inputs are reported before Ray starts
    except JobSetupError as exc:
        print(f"surgray annotate: {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    # Nothing to track (all complete, rejected or unreadable): no need to start Ray.
    started = bool(plan.rows) and connect_ray(
        args.ray_address, num_cpus=args.num_cpus, temp_dir=args.ray_temp_dir
    )
    try:
        outcome = execute(plan)
    finally:
        if started:
            import ray

            ray.shutdown()
    print(outcome.report())
    print(f"outputs under {config.output.prefix}")
    return exit_code(outcome.summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="surgray annotate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
