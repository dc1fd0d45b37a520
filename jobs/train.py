"""Ray job entry point for fine-tuning (all logic lives in `surgray.train`).

    ray job submit --working-dir . -- python jobs/train.py --config configs/train_demo.yaml

Arguments are those of `surgray train` (`--set key=value`, `--check-only`, `--export PATH`).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python jobs/train.py` puts jobs/ first on sys.path; the package is one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgray.job_requirements import require  # noqa: E402  (standard library only)

require("train")  # a Python without surgray's packages: one line naming them, exit 2

from surgray.train.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
