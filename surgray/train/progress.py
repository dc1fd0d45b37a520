"""What a training worker shows while it runs: the progress line and the progress file.

The progress line goes to the worker's stdout every `schedule.log_every` steps, on the first
step and on the last (rank 0 only), and validation at an epoch's end writes a line per video;
under Ray Train the driver prints it with the worker's pid. The progress file
(`checkpoint.progress_file`, JSON lines) records start, step and epoch events of every rank,
for tests and for tools that follow a run (the fault-tolerance test reads worker pids there).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surgray.train.config import ScheduleSection

# The loss terms a step reports, summed per epoch and averaged over workers.
LOSS_PARTS = (
    "total",
    "focal",
    "dice",
    "iou",
    "object_class",
    "tsl",
    "text_category",
    "pixel_category",
)
_LABELS = {"object_class": "obj", "text_category": "text_cat", "pixel_category": "pixel_cat"}


def progress_line(
    schedule: ScheduleSection,
    epoch: int,
    step: int,
    global_step: int,
    parts: dict[str, float],
    lr: float,
    seconds_per_step: float,
) -> str:
    """One line: position (0-based epoch and step, shown 1-based), loss terms, learning rate,
    speed and the time left at this speed."""
    left = (schedule.total_steps - global_step) * seconds_per_step
    return (
        f"[surgray train] epoch {epoch + 1}/{schedule.epochs} "
        f"step {step + 1}/{schedule.steps_per_epoch} "
        f"(global {global_step}/{schedule.total_steps}) loss {parts['total']:.4g} "
        f"({loss_terms(parts)}) lr {lr:.3g} {seconds_per_step:.2f} s/step "
        f"eta {format_duration(left)}"
    )


def line_due(global_step: int, first_step: int, total_steps: int, log_every: int) -> bool:
    """Whether step `global_step` (1-based, counted over the whole run) gets a progress line:
    every `log_every` steps, and also the run's first step (so a run says at once that it is
    training, how fast and for how long) and its last one (short runs, `--max-steps`)."""
    return global_step % log_every == 0 or global_step in (first_step + 1, total_steps)


def show(line: str) -> None:
    """Write a line to stdout. Not print(): in a Ray Train worker print writes to stdout and
    also logs to the root logger, whose console handler writes it again, so every line reached
    the driver twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def loss_terms(parts: dict[str, float]) -> str:
    """The unweighted loss terms of the progress line."""
    return " ".join(f"{_LABELS.get(k, k)} {parts[k]:.3g}" for k in LOSS_PARTS[1:])


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def record_progress(path: str | None, event: str, rank: int, **fields) -> None:
    """Append one JSON line (event, pid, rank, time, fields) to the progress file, if any."""
    if path is None:
        return
    record = {"event": event, "pid": os.getpid(), "rank": rank, "time": time.time(), **fields}
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
