"""A skip hook that records which thread of which process saw each frame, and when, so that a
test can tell whether an annotate actor tracked two videos at once (`actors.concurrent_videos`).

    frames.skip_hook: "devtools.thread_probe:record"

The hook runs in the actor, where the test cannot pass it arguments: it appends to the folder
named in the pointer file `POINTER` (written by `start`), one line per frame, and never skips.
It writes one file per thread and declares itself thread-safe, so an actor with concurrent
videos calls it from its threads at once (`surgray.annotate.hooks.is_thread_safe`).

`start(folder, rendezvous=True)` also makes the first thread that reaches the hook wait until a
second thread of its process has reached it too (at most `RENDEZVOUS_S`), and every call yield
for a moment after recording. Whether an actor's second call starts while its first is still
tracking depends on how soon Ray Data hands it the next row, which on a loaded 2-core machine
can be after a short video is already done; the rendezvous takes that timing out of the test.
It proves nothing by itself: with calls that cannot overlap, the first thread waits out the
limit alone and the interleaving count stays 0. The job's configuration (and so the rows'
provenance) is the same either way.
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
RENDEZVOUS_S = 60.0
YIELD_S = 0.005

_arrived: dict[str, set[int]] = {}  # probe folder -> threads of this process that reached it
_arrival = threading.Condition()


def start(folder: str | os.PathLike, *, rendezvous: bool = False) -> None:
    """Make the hook write under `folder` (a fresh folder per run)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    POINTER.write_text(f"{int(rendezvous)} {folder}")


def record(frame: Any) -> bool:
    """The hook: one line `time pid thread frame_index`; keeps every frame."""
    rendezvous, folder = POINTER.read_text().split(" ", 1)
    if rendezvous == "1":
        _meet_a_second_thread(folder)
    line = f"{time.monotonic():.6f} {os.getpid()} {threading.get_ident()} {frame.index}\n"
    with open(Path(folder) / f"{os.getpid()}-{threading.get_ident()}.txt", "a") as handle:
        handle.write(line)
    if rendezvous == "1":
        time.sleep(YIELD_S)  # lets the other thread's frame in between
    return False


record.thread_safe = True


def _meet_a_second_thread(folder: str) -> None:
    with _arrival:
        threads = _arrived.setdefault(folder, set())
        threads.add(threading.get_ident())
        _arrival.notify_all()
        _arrival.wait_for(lambda: len(threads) >= 2, timeout=RENDEZVOUS_S)


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
