"""Memory of a process tree, sampled from /proc (Linux): what a Ray job costs in all its
processes (driver, GCS, raylet, workers), not only in the worker that runs the model.

`TreeSampler(roots)` polls in a background thread; for every sample it sums, over the roots
and all their descendants, resident memory (RSS: shared library pages counted once per
process, so it overstates a many-process tree), and less often proportional set size (PSS:
shared pages split between the processes that map them, so the sum is the tree's real
footprint). Peaks are the largest sums seen; the largest single process's peak is the kernel's
own high-water mark (VmHWM), which no sample can miss. A process that ends between two samples
is simply missed in that one. It also keeps each process's CPU time (user + system) as last
seen, by command line, so a job's CPU can be split between the process that runs the model and
everything around it.

The sampler must not tax what it measures: RSS comes from /proc/PID/status (~0.02 ms a
process), PSS from /proc/PID/smaps_rollup, for which the kernel walks the page tables (~3 ms of
CPU a process: 75 ms a sample for a local Ray job's 23 processes, 30% of a core at 4 samples a
second, against a few ms for a single-process loop), so PSS is sampled every `pss_interval_s`.
"""

from __future__ import annotations

import os
import threading
import time
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


def _pss(pid: int) -> int:
    """PSS bytes of one process; 0 when it has gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _resident(pid: int) -> tuple[int, int]:
    """(RSS now, peak RSS) bytes of one process (VmRSS, VmHWM); (0, 0) when it has gone."""
    rss = peak = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, peak


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far; None when it has gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def command(pid: int, width: int = 60) -> str:
    """The process's command line (Ray retitles its workers: `ray::MapWorker(...)`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            text = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return text[:width]


@dataclass
class TreePeak:
    rss: int = 0
    pss: int = 0
    largest_rss: int = 0
    processes: int = 0
    samples: int = 0


class TreeSampler:
    """Peak RSS sums of process trees sampled every `interval_s`, PSS sums every
    `pss_interval_s`, until `stop()`."""

    def __init__(
        self, roots: list[int], interval_s: float = 0.25, pss_interval_s: float = 5.0
    ) -> None:
        self.roots = list(roots)
        self.interval_s = interval_s
        self.pss_interval_s = pss_interval_s
        self._pss_at = float("-inf")
        self.peak = TreePeak()
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (command, CPU seconds) last seen
        self.timeline: list[tuple[float, dict[int, float]]] = []  # (time.time(), pid -> CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def add_root(self, pid: int) -> None:
        self.roots.append(pid)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        now, seen = time.time(), {}
        pids = tree_pids(self.roots)
        for pid in pids:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                name = command(pid) or self.cpu.get(pid, ("(exited)", 0.0))[0]
                self.cpu[pid] = (name, seconds)
                seen[pid] = seconds
        self.timeline.append((now, seen))
        resident = [_resident(pid) for pid in pids]
        peak = self.peak
        peak.rss = max(peak.rss, sum(rss for rss, _ in resident))
        peak.largest_rss = max([peak.largest_rss, *(hwm for _, hwm in resident)])
        if now - self._pss_at >= self.pss_interval_s:
            self._pss_at = now
            peak.pss = max(peak.pss, sum(_pss(pid) for pid in pids))
        peak.processes, peak.samples = max(peak.processes, len(pids)), peak.samples + 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> TreePeak:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.peak

    def cpu_between(self, start: float, end: float) -> list[tuple[str, float]]:
        """(command, CPU seconds) spent between two `time.time()` instants, from the samples
        nearest inside them, busiest first."""
        inside = [(t, seen) for t, seen in self.timeline if start <= t <= end]
        if len(inside) < 2:
            return []
        (_, first), (_, last) = inside[0], inside[-1]
        spent = {pid: last[pid] - first.get(pid, 0.0) for pid in last}
        named = [(self.cpu[pid][0], seconds) for pid, seconds in spent.items() if seconds > 0]
        return sorted(named, key=lambda item: -item[1])

    def cpu_by_process(self) -> list[tuple[str, float]]:
        """(command, CPU seconds) of every process seen, most CPU first."""
        return sorted(self.cpu.values(), key=lambda item: -item[1])
