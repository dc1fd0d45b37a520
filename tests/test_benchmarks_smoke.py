"""Smoke test of the side-by-side benchmarks: each script's `--quick` mode runs end to end.

`--quick` uses the micro network (widened where transformers hard-codes a width) at 128 px:
the speed script runs surgray (`recent`, `prune`), Meta's SAM2VideoPredictor and
transformers' Sam2VideoModel on 12 frames with one object, the memory script surgray and the
reference on 20 and 40 frames. Each prints its markdown table; the speed script's masks
check is real (all four run the same weights on the same frames), so `recent` and
transformers must come out identical to the reference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_quick(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{script} --quick failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their implementation cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for cell in cells:
            if cell.startswith(("surgray-", "sam2", "transformers")):
                rows[cell] = cells
                break
    return rows


@pytest.mark.timeout(300)
def test_tracker_speed_quick_prints_a_checked_table():
    out = run_quick("bench_tracker_speed.py")
    assert "### Tracker speed: micro at 128px" in out
    rows = table_rows(out)
    assert set(rows) == {"surgray-recent", "surgray-prune", "sam2", "transformers"}
    for name in ("surgray-recent", "transformers"):
        assert rows[name][-1].startswith("identical"), rows[name]
    assert rows["sam2"][-1] == "reference"
    for cells in rows.values():
        float(cells[2])  # median ms/frame is a number
        assert cells[4].endswith("x")


@pytest.mark.timeout(300)
def test_memory_vs_length_quick_prints_a_table():
    out = run_quick("bench_memory_vs_length.py")
    assert "### Peak RSS (MB) against video length" in out
    rows = table_rows(out)
    assert set(rows) == {"surgray-recent", "sam2"}
    for cells in rows.values():
        assert int(cells[1]) > 0 and int(cells[2]) > 0  # peak RSS at 20 and 40 frames
    assert rows["surgray-recent"][5].endswith("KiB")  # the tracker's own state
    assert rows["sam2"][5] == "not measured"
