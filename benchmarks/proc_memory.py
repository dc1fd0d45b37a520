"""Memory of a process tree, sampled from /proc (Linux): what a Ray job costs in all its
processes (driver, GCS, raylet, workers), not only in the worker that runs the model.

`TreeSampler(roots)` polls in a background thread; for every sample it sums, over the roots
and all their descendants, resident memory (RSS: shared library pages counted once per
process, so it overstates a many-process tree) and proportional set size (PSS: shared pages
split between the processes that map them, so the sum is the tree's real footprint). Peaks are
the largest sums seen. A process that ends between two samples is simply missed in that one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

MB = 1024 * 1024


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def tree_pids(roots: list[int]) -> list[int]:
    """The roots that still exist and all their descendants."""
    children = _children_map()
    seen: list[int] = []
    stack = [pid for pid in roots if os.path.exists(f"/proc/{pid}")]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children.get(pid, []))
    return seen


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process; (0, 0) when it has gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def tree_memory(roots: list[int]) -> tuple[int, int, int, int]:
    """(RSS sum, PSS sum, largest single RSS, process count) of the trees under `roots` now."""
    pids = tree_pids(roots)
    sums = [_rollup(pid) for pid in pids]
    largest = max((r for r, _ in sums), default=0)
    return sum(r for r, _ in sums), sum(p for _, p in sums), largest, len(pids)


@dataclass
class TreePeak:
    rss: int = 0
    pss: int = 0
    largest_rss: int = 0
    processes: int = 0
    samples: int = 0


class TreeSampler:
    """Peak RSS / PSS sums of process trees, sampled every `interval_s` until `stop()`."""

    def __init__(self, roots: list[int], interval_s: float = 0.25) -> None:
        self.roots = list(roots)
        self.interval_s = interval_s
        self.peak = TreePeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def add_root(self, pid: int) -> None:
        self.roots.append(pid)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        rss, pss, largest, count = tree_memory(self.roots)
        peak = self.peak
        peak.rss, peak.pss = max(peak.rss, rss), max(peak.pss, pss)
        peak.largest_rss = max(peak.largest_rss, largest)
        peak.processes, peak.samples = max(peak.processes, count), peak.samples + 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> TreePeak:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.peak
