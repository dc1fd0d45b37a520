"""`benchmarks/profile_tracker.py --quick` regenerates section 1's three profile tables.

Both networks run the same weights on the same frames, so their FLOP counts for a frame with a
full memory bank must be positive and close (surgray skips the window-padding rows' products,
so it may count fewer, never more than a few percent above), and every component must be timed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table(text: str, title: str) -> dict[str, list[str]]:
    block = text.split(f"### {title}", 1)[1].split("###", 1)[0]
    rows = {}
    lines = [line for line in block.splitlines() if line.startswith("|")]
    for line in lines[2:]:  # after the header and its rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_quick_profile_prints_flops_operator_shares_and_component_times():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "profile_tracker.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    flops = table(proc.stdout, "FLOPs per frame")
    ours, reference = float(flops["surgray"][0]), float(flops["sam2"][0])
    assert 0 < ours <= reference * 1.02
    assert 0 < float(flops["surgray"][1]) <= float(flops["sam2"][1]) * 1.02  # the Hiera trunk
    shares = table(proc.stdout, "surgray operator shares")
    assert {"matrix products", "fused attention"} <= set(shares)
    assert abs(sum(float(v[0].rstrip("%")) for v in shares.values()) - 100) <= len(shares)
    components = table(proc.stdout, "Component timers")
    assert set(components) == {
        "image encoder trunk",
        "image encoder neck",
        "memory attention",
        "mask decoder",
        "memory encoder",
        "whole step",
    }
    assert all(float(cells[1]) > 0 for cells in components.values())
