"""`surgray evaluate`: the old name of `surgray benchmark` (`surgray.annotate.evaluate_job`).

`surgray eval` (score masks you already have) and `surgray evaluate` (run a checkpoint over a
dataset, then score it) were too alike to tell apart; the second is now `surgray benchmark`.
This name keeps working and says so in one line.
"""

from __future__ import annotations

import argparse
import sys

from surgray.annotate.evaluate_job import add_arguments
from surgray.annotate.evaluate_job import run as run_benchmark

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    print(
        "surgray evaluate: deprecated name, use `surgray benchmark` (same arguments)",
        file=sys.stderr,
    )
    return run_benchmark(args)
