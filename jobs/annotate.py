"""Annotate a video archive on a Ray cluster:

    ray job submit --working-dir . -- python jobs/annotate.py --config configs/annotate_demo.yaml

Inside `ray job submit` (RAY_ADDRESS is set) it joins the cluster; run directly, it starts a
local Ray. All logic lives in `surgray.annotate`; see `surgray annotate --help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory holds the surgray package; make it importable however the
# script is started (`python jobs/annotate.py` puts only jobs/ on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgray.job_requirements import require  # noqa: E402  (standard library only)

require("annotate")  # a Python without surgray's packages: one line naming them, exit 2

from surgray.annotate.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
