"""Benchmark the annotation pipeline on datasets with ground truth (J&F table per dataset):

    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/evaluate_endovis18_surgsam2.yaml

Run directly, it starts a local Ray. All logic lives in `surgray.annotate.evaluate_job`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgray.job_requirements import require  # noqa: E402  (standard library only)

require("evaluate")  # a Python without surgray's packages: one line naming them, exit 2

from surgray.annotate.evaluate_job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
