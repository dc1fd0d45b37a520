"""What the annotate job shows while it runs: one line per finished video.

    [annotate] 3/10 videos done (1 failed): case-07 done, 480 frames | 41.2 frames/s | ETA 2m40s

The rate counts every tracked frame of the job since its first work item was handed out (model
loading included, as a user waits for it too). The ETA weighs the videos left by their frame
counts when the probe gave every video one, else counts them alike. Ray Data's own per-operator
progress bars are off unless asked for (`progress_bars(True)`, `surgray annotate
--progress-bars`): on a terminal they redraw, but in a job log each redraw is a line, and the
job's one useful line drowned in them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from surgray.annotate.logsafe import video_label
from surgray.train.progress import format_duration

PREFIX = "[annotate]"


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class VideoProgress:
    """Counts finished videos and writes a line for each (see the module docstring)."""

    def __init__(
        self,
        video_ids: list[str],
        *,
        frame_counts: Mapping[str, int] | None = None,
        write: Callable[[str], None] = _write,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = len(video_ids)
        counts = dict(frame_counts or {})
        known = all(counts.get(v, 0) > 0 for v in video_ids)
        # Each video's share of the work: its frames when all are known, else 1.
        self._weights = {v: float(counts[v]) if known else 1.0 for v in video_ids}
        self._weight_total = sum(self._weights.values()) or 1.0
        self._weight_done = 0.0
        self.done = 0
        self.failed = 0
        self.write = write
        self.clock = clock
        self.started = clock()

    @classmethod
    def for_plan(cls, plan: Any, **kwargs: Any) -> VideoProgress:
        """Progress over the videos a `JobPlan` hands to Ray (probe frame counts as weights
        where the driver has them; videos found unreadable by the driver are finished already
        and not counted)."""
        counts = {v: info.frame_count for v, info in plan.infos.items() if info is not None}
        return cls(plan.video_ids, frame_counts=counts, **kwargs)

    def drop(self, video_id: str, kind: str) -> None:
        """Planning in the pipeline settled `video_id` without work: a rejected video leaves
        the count; an unreadable one is counted when its failed status arrives."""
        if kind == "rejected":
            self.total = max(self.done, self.total - 1)
            self._weight_total = max(self._weight_total - self._weights.pop(video_id, 0.0), 1.0)

    def start(self, skipped: int = 0) -> None:
        self.started = self.clock()
        if self.total:
            earlier = f" ({skipped} complete from earlier runs)" if skipped else ""
            self.write(f"{PREFIX} 0/{self.total} videos done{earlier}; starting the actors")

    def video_done(self, video_id: str, state: str, frames: int, frames_total: int) -> str:
        """Record one finished video; returns (and writes) its progress line."""
        self.done += 1
        self.failed += state == "failed"
        self._weight_done += self._weights.get(video_id, 1.0)
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = frames_total / elapsed
        fraction = min(1.0, self._weight_done / self._weight_total)
        eta = elapsed * (1.0 - fraction) / fraction if fraction > 0 else float("inf")
        failed = f" ({self.failed} failed)" if self.failed else ""
        line = (
            f"{PREFIX} {self.done}/{self.total} videos done{failed}: {video_label(video_id)} "
            f"{state}, {frames} frames | {rate:.1f} frames/s | "
            + ("finished" if self.done >= self.total else f"ETA {format_duration(eta)}")
        )
        self.write(line)
        return line


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Ray Data's progress bars (global and per operator) on or off for the datasets made and
    run inside; and, when off, Ray Data's INFO lines (dataset plans, "execution finished") kept
    off the console too. Its log files under the Ray session keep everything."""
    import logging

    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.enable_progress_bars, context.enable_operator_progress_bars)
    context.enable_progress_bars = enabled
    context.enable_operator_progress_bars = enabled
    consoles = []
    if not enabled:
        consoles = [
            (h, h.level)
            for h in logging.getLogger("ray.data").handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        for handler, _ in consoles:
            handler.setLevel(logging.WARNING)
            handler.addFilter(_not_the_bars_notice)
    try:
        yield
    finally:
        context.enable_progress_bars, context.enable_operator_progress_bars = saved
        for handler, level in consoles:
            handler.setLevel(level)
            handler.removeFilter(_not_the_bars_notice)


def _not_the_bars_notice(record: Any) -> bool:
    """Drops Ray Data's warning that its bars are off (we turned them off; the flag that turns
    them on is ours, not the DataContext line it suggests)."""
    return not str(record.msg).startswith("Progress bars disabled")
