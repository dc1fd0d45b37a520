"""Where the checkpoints shipped inside the package live, and how configs name them.

Torch-free on purpose: the demo, the annotate job's `demo:` inputs and Serve's demo clips
need these paths without loading the network's code.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_PREFIX = "demo:"  # `demo:<name>` names surgray/assets/demo/<name>.pt
# Found beside this file, so any working directory and any installed layout resolve alike.
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"
