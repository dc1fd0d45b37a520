"""Shared harness of the side-by-side benchmarks (issue 9's protocol).

- Same thread count on every side: `pin_threads(2)` in every worker process.
- Every measured run is its own subprocess (`run_worker`), so peak RSS is clean and one
  implementation's allocator state never leaks into another's numbers; runs of the
  implementations are interleaved round by round (`interleaved_order`) so a change in the
  machine's load hits all of them alike, and the figure kept is the median of the rounds.
- Only frames `TIMED_FROM`.. are timed: by then SAM2's memory bank (7 slots) is full.
- Peak memory is the kernel's high-water mark of resident memory (VmHWM), reset just before
  the measured phase (`reset_peak_rss`), so setup (imports, weights, init) is not counted in
  the "during tracking" figure; the whole-process peak is reported too.
- Tables print 'not measured' in any cell without a measurement, never an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMED_FROM = 8  # first timed frame: the 7-slot memory bank is full from here on
NOT_MEASURED = "not measured"
MB = 1024 * 1024


def add_repo_paths() -> None:
    """Make `surgray`, `devtools` (the reference runner shared with the tests) and the
    benchmarks' own modules importable from a script run directly."""
    for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def pin_threads(threads: int) -> None:
    """Same intra-op thread count for every implementation (issue 9: 2 on CPU)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process; harmless
        pass


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        # Idle OpenMP threads sleep instead of spinning: on a machine shared by more busy
        # processes than cores, spinning workers wait on descheduled partners and a 2-thread
        # run becomes 5-30x slower, erratically. Same setting on every side.
        OMP_WAIT_POLICY="PASSIVE",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
        TRANSFORMERS_VERBOSITY="error",
    )
    return env


# Random weights under which the tracked masks are neither empty nor the whole frame (probed
# with benchmarks' clips; most seeds give all-empty or all-full masks, which would make the
# masks check trivially pass). The logit comparison does not depend on it.
WEIGHT_SEEDS = {"micro": 6, "sam2.1_hiera_tiny": 1}


def default_weight_seed(variant: str) -> int:
    return WEIGHT_SEEDS.get(variant, 1)


def bench_config(variant: str, image_size: int):
    """Our model config; `micro` is the micro test network widened where transformers
    hard-codes a width (memory 64 channels, so the pointer width must be a multiple: 128)."""
    from surgray.model.checkpoints.variants import get_variant, micro_config

    if variant != "micro":
        return get_variant(variant, image_size=image_size)
    width, mem = 128, 64
    return micro_config(image_size).updated(
        image_encoder={"neck": {"d_model": width, "position_encoding": {"num_pos_feats": width}}},
        memory_attention={
            "d_model": width,
            "layer": {
                "d_model": width,
                "self_attention": {"embedding_dim": width},
                "cross_attention": {"embedding_dim": width, "kv_in_dim": mem},
            },
        },
        memory_encoder={
            "out_dim": mem,
            "in_dim": width,
            "position_encoding": {"num_pos_feats": mem},
            "mask_downsampler": {"embed_dim": width},
            "fuser": {"layer": {"dim": width}},
        },
    )


# ------------------------------------------------------------------ memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_rss() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """High-water mark of resident memory since start or the last `reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ timing statistics
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), numpy's default method."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class FrameStats:
    median_s: float
    p90_s: float
    frames: int


def frame_stats(times: Sequence[float], first: int = TIMED_FROM) -> FrameStats:
    timed = list(times[first:])
    if not timed:
        raise ValueError(f"no frames from {first} on: the video has {len(times)} frames")
    return FrameStats(statistics.median(timed), percentile(timed, 90), len(timed))


def median_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


# ------------------------------------------------------------------ in-process kernels
def kernel_bench_args(description: str) -> argparse.Namespace:
    """The command line of a one-kernel benchmark (`--quick`, `--rounds`, `--threads`), parsed,
    with torch pinned to `--threads` threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small maps, few rounds (CI)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)
    return args


def median_ms(calls: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each side, the sides called one after another in every
    round, so that a change in the machine's load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


# ------------------------------------------------------------------ subprocess runs
def interleaved_order(names: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, name) pairs, all names once per round; the starting name rotates each round
    so no implementation always runs first (on a cold cache) or last."""
    order = []
    for r in range(rounds):
        shift = r % len(names)
        for name in list(names[shift:]) + list(names[:shift]):
            order.append((r, name))
    return order


def run_worker(
    script: Path, args: Sequence[str], threads: int, timeout_s: float, nice: int = 5
) -> dict:
    """Run `script --worker ...` in a fresh interpreter (niced) and return its JSON result.

    The worker writes its result to the file named by `--result`; stdout/stderr are kept
    for the error message if it fails.
    """
    result_path = Path(args[args.index("--result") + 1])
    cmd = [sys.executable, str(script), *args]
    if nice and hasattr(os, "nice"):
        cmd = ["nice", "-n", str(nice), *cmd]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, env=child_env(threads), capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"worker {' '.join(args[:4])} failed (rc {proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.monotonic() - started
    return result


# ------------------------------------------------------------------ machine and tables
def machine_line(threads: int) -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            names = [ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads per side, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load}"
    )


def fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:.{digits}f}{unit}"


def fmt_mb(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value / MB:.0f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table (printed and returned); None cells read 'not measured'."""
    cells = [[NOT_MEASURED if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
