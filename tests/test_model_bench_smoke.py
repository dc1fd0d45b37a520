"""Smoke test of the model-level benchmarks' `--quick` modes: bench_rope (our RoPE against the
reference's), bench_load_memory (an actor's resident memory step by step) and
profile_fast_mode (self time per network part, exact and fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_quick(script: str, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{script} --quick failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def rows(text: str) -> dict[str, list[str]]:
    found = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            found[cells[0]] = cells[1:]
    return found


def test_bench_rope_quick_matches_the_reference():
    table = rows(run_quick("bench_rope.py"))
    for side in ("surgray", "surgray, in place (inference)", "reference (sam2)"):
        ms, _, diff = table[side]
        assert float(ms) > 0
        assert float(diff) <= 1e-5


def test_bench_load_memory_quick_samples_every_step():
    out = run_quick("bench_load_memory.py", "--precisions", "fp32")
    table = rows(out)
    for step in ("import torch + surgray", "load_network", "tracked frame 1"):
        rss, peak = (float(v) for v in table[step])
        assert 0 < rss <= peak


def test_profile_fast_mode_quick_times_both_sides():
    table = rows(run_quick("profile_fast_mode.py"))
    assert "RoPEAttention" in {cells[0] for cells in table.values()}
    exact, fast = table["whole step"][1], table["whole step"][2]
    assert float(exact) > 0 and float(fast.split()[0]) > 0
