"""Smoke test of the batch-annotation benchmark: `--quick` with one configuration runs the real
annotate job on its own local Ray (4 synthetic clips x 12 frames, random micro weights) and
prints its table with measured numbers in the 1x1 row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_annotate.py"
TIME_LIMIT_S = 240  # Ray start alone can take 30 s on a loaded 2-core machine


def markdown_rows(text: str) -> dict[str, list[str]]:
    """Table rows keyed by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 30)
def test_quick_single_config_prints_the_table():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "1", "--configs", "1x1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
    )
    assert proc.returncode == 0, f"bench_annotate failed:\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "### Batch annotation: micro at 128px, random weights (throughput only)" in out
    assert "4 videos x 12 frames at 128x128" in out
    rows = markdown_rows(out)
    assert set(rows) == {"config", "1x1"}, rows  # the filter left only the asked config
    header, row = rows["config"], rows["1x1"]
    cell = dict(zip(header, row))
    assert cell["actors"] == "1" and cell["videos/step"] == "1"
    assert cell["frames"] == "48"  # every frame of every clip was tracked
    assert float(cell["job wall s"]) > 0
    assert float(cell["job frames/s"]) > 0
    assert cell["vs 1x1"] == "1.00x"
    assert float(cell["actor frames/s"]) >= float(cell["job frames/s"])
    assert "load average (1, 5, 15 min) at start" in out


def test_bad_config_filter_is_named():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--configs", "2by4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "config '2by4': write ACTORSxVIDEOS_PER_STEP" in proc.stderr
