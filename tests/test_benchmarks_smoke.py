"""Smoke test of the side-by-side benchmarks: each script's `--quick` mode runs end to end.

`--quick` uses the micro network (widened where transformers hard-codes a width) at 128 px:
the speed script runs surgray (`recent`, `prune`), Meta's SAM2VideoPredictor and
transformers' Sam2VideoModel on 12 frames with one object, the memory script surgray and the
reference on 20 and 40 frames. Each prints its markdown table; the speed script's masks
check is real (all four run the same weights on the same frames), so `recent` and
transformers must come out identical to the reference. The archive benchmarks (throughput
against the reference's loop, the driver at archive scale) and the GPU script's CPU dry run
run in small forms of their own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


def run_script(script: str, *args: str, timeout: float = 420) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_fast_mode_quick_prints_speed_fidelity_and_verdicts():
    out = run_script("bench_fast_mode.py", "--quick", "--options", "fp32,int8")
    assert "### Fast mode speed: micro at 128px" in out
    assert "### Fast mode fidelity: demo checkpoints" in out
    rows = [line for line in out.splitlines() if line.startswith("| int8")]
    assert len(rows) == 2  # the speed table's row and the verdict's
    assert any(line.startswith("| referring.pt | int8") for line in out.splitlines())


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_archive_throughput_quick_compares_the_reference_loop_with_the_job():
    out = run_script("bench_archive_throughput.py", "--quick")
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in ("reference", "exact", "fast"):
            rows.setdefault(cells[0], cells)  # the summary table; the CPU table comes after
    assert set(rows) == {"reference", "exact", "fast"}
    assert rows["reference"][1] == rows["exact"][1] == rows["fast"][1] == "36"  # 2 x 18 frames
    # Exact mode gives the reference's masks (same pixels, same weights, no hole filling).
    assert rows["exact"][-1].startswith("identical"), rows["exact"]
    for cells in rows.values():
        assert float(cells[3]) > 0 and int(cells[6]) > 0  # frames/s, peak tree RSS MB
    # The job's tree is the CLI driver and its own local Ray (GCS, raylet, the actor...).
    assert int(rows["reference"][9]) == 1 and int(rows["exact"][9]) >= 3
    assert "### Runs in order" in out and "### CPU seconds by process" in out
    # The job sides track --threads (2) videos at once per actor, the recommended CPU setting.
    assert "the job's actor runs 2 videos at once" in out


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_archive_scale_on_a_small_archive_prints_both_tables():
    """bench_archive_scale end to end on 30 videos (~30 s): moto on loopback, the job until its
    first video, the rerun check over the complete prefix, and the CLI over it."""
    out = run_script("bench_archive_scale.py", "--sizes", "30")
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| 30 ")
    ]
    assert len(rows) == 2, out  # the scale table and the rerun table, one row each
    scale, rerun = rows
    assert scale[4].endswith(" s") and float(scale[4].split()[0]) > 0  # first video done
    assert scale[10] == rerun[12] == "0 (30 skipped)"  # work rows on rerun: none
    assert rerun[14].startswith("exit 0") and "Ray not started" in rerun[14]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_gpu_check_dry_run_on_cpu_writes_its_results_file(tmp_path):
    out_file = tmp_path / "gpu.md"
    run_script("gpu_check.py", "--device", "cpu", "--quick", "--out", str(out_file))
    text = out_file.read_text()
    for section in ("## environment", "## parity", "## bf16", "## speed", "## scan"):
        assert section in text
    assert "| min_pixel_agreement | 1 |" in text  # CPU against CPU: the same numbers
    assert "reference_single_fps" in text and "surgray_2_videos_fps" in text
    assert '"error"' not in text
