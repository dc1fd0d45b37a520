"""Skip hook for test_annotate_progress.py: the first actor to reach frame 3 of any video dies
there (its process exits, as when a worker or node is lost); later calls skip nothing.

Imported on the Ray workers as "tests._die_once_hook:die_once" (the repo root is on their path).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MARKER = Path(tempfile.gettempdir()) / "surgray-test-die-once"


def die_once(frame) -> bool:
    if frame.index == 3 and MARKER.is_dir() and not (MARKER / "died").exists():
        (MARKER / "died").write_text(str(os.getpid()))
        os._exit(1)  # no cleanup, no exception: the actor is simply gone
    return False
