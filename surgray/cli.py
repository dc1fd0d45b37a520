"""The `surgray` command. Each subcommand lives in its own module, imported only when used,
so `surgray --help` stays fast and a subcommand's heavy dependencies (Ray, PyAV) load on demand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("surgray.demo", "generate a synthetic surgical clip and segment it end to end"),
    "annotate": ("surgray.annotate.cli", "annotate a video archive on Ray (local Ray on a laptop)"),
    "evaluate": (
        "surgray.annotate.evaluate_job",
        "run the pipeline on a dataset with ground truth and print J&F",
    ),
    "train": ("surgray.train.cli", "fine-tune on Ray Train (SAM2S / ReSurgSAM2 recipes)"),
    "eval": ("surgray.eval.cli", "score predicted masks against ground truth (J, F, J&F, Dice)"),
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
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS or not _available(COMMANDS[name][0]):
        print(f"surgray: unknown command {name!r} (see surgray --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"surgray {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
