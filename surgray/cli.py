"""The `surgray` command. Each subcommand lives in its own module, imported only when used,
so `surgray --help` stays fast and a subcommand's heavy dependencies (Ray, PyAV) load on demand.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from surgray.errors import (
    EXIT_INTERNAL,
    EXIT_USER,
    OneLineArgumentParser,
    UserError,
    debug_requested,
    one_line,
)

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("surgray.demo", "generate a synthetic surgical clip and segment it end to end"),
    "annotate": ("surgray.annotate.cli", "annotate a video archive on Ray (local Ray on a laptop)"),
    # Two evaluations, named by what they take: `eval` scores masks you already have,
    # `benchmark` runs a checkpoint over a dataset with ground truth and then scores it.
    "benchmark": (
        "surgray.annotate.evaluate_job",
        "run a checkpoint on a dataset with ground truth (pipeline on Ray) and print J&F",
    ),
    "train": ("surgray.train.cli", "fine-tune on Ray Train (SAM2S / ReSurgSAM2 recipes)"),
    "eval": (
        "surgray.eval.cli",
        "score masks you already have against ground truth (J, F, J&F, Dice); runs no model",
    ),
    "evaluate": (
        "surgray.annotate.evaluate_alias",
        "deprecated name of `surgray benchmark`",
    ),
    "synth": ("surgray.data.synthetic_cli", "write synthetic surgical clips with ground truth"),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgray", description="Segment and track instruments and tissue in surgical video."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if _available(module):
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--debug":
        os.environ["SURGRAY_DEBUG"] = "1"
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS or not _available(COMMANDS[name][0]):
        print(f"surgray: unknown command {name!r} (see surgray --help)", file=sys.stderr)
        return EXIT_USER
    module = importlib.import_module(COMMANDS[name][0])
    parser = OneLineArgumentParser(prog=f"surgray {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        if debug_requested():
            raise
        print(f"surgray {name}: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"surgray {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug_requested():
            raise
        print(
            f"surgray {name}: internal error: {type(exc).__name__}: {one_line(exc, 300)} "
            "(rerun with --debug or SURGRAY_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
