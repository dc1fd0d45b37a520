"""A skip hook that records which thread of which process saw each frame, and when, so that a
test can tell whether an annotate actor tracked two videos at once (`actors.concurrent_videos`).

    frames.skip_hook: "devtools.thread_probe:record"

The hook runs in the actor, where the test cannot pass it arguments: it appends to the folder
named in the pointer file `POINTER` (written by `start`), one line per frame, and never skips.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POINTER = Path(tempfile.gettempdir()) / "surgray-thread-probe.path"


def start(folder: str | os.PathLike) -> None:
    """Make the hook write under `folder` (a fresh folder per run)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    POINTER.write_text(str(folder))


def record(frame: Any) -> bool:
    """The hook: one line `time pid thread frame_index`; keeps every frame."""
    folder = Path(POINTER.read_text())
    line = f"{time.monotonic():.6f} {os.getpid()} {threading.get_ident()} {frame.index}\n"
    with open(folder / f"{os.getpid()}-{threading.get_ident()}.txt", "a") as handle:
        handle.write(line)
    return False


@dataclass(frozen=True)
class Sighting:
    at: float
    thread: tuple[int, int]  # (pid, thread id)
    frame: int


def read(folder: str | os.PathLike) -> list[Sighting]:
    """Every frame the hook saw under `folder`, in time order."""
    seen = []
    for path in Path(folder).glob("*.txt"):
        for line in path.read_text().splitlines():
            at, pid, thread, frame = line.split()
            seen.append(Sighting(float(at), (int(pid), int(thread)), int(frame)))
    return sorted(seen, key=lambda s: s.at)


def interleavings(seen: list[Sighting]) -> int:
    """How often a thread's consecutive frames (index i, then i + 1) had another thread's
    frame between them: > 0 only when two threads were tracking at the same time."""
    count = 0
    last: dict[tuple[int, int], tuple[int, int]] = {}  # thread -> (position, frame index)
    for position, s in enumerate(seen):
        previous = last.get(s.thread)
        if previous is not None and s.frame == previous[1] + 1:
            between = seen[previous[0] + 1 : position]
            count += any(other.thread != s.thread for other in between)
        last[s.thread] = (position, s.frame)
    return count
