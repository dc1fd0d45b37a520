"""Packaged data (the CLIP vocabulary under surgray/assets/) is found from any working
directory (issue 22): also from a folder that holds another `surgray/` folder, where
`importlib.resources.files("surgray")` gave a namespace package's `MultiplexedPath` and every
worker that built a text tower died with `TypeError: MultiplexedPath.joinpath()`.

Each case is a real `python -c` in such a folder (its cwd first on sys.path, as for `python -c`,
`python -m` and Ray workers started with a working dir).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import sys
from surgray.model.text.tower import TextTowerConfig, build_text_tower, shipped_vocab_path
from surgray.model.text import tower as text_tower
tower = build_text_tower(TextTowerConfig())
ids = tower.tokenizer(["the grasper"])["input_ids"][0]
print(shipped_vocab_path())
print(text_tower.__file__)
print(len(ids))
"""


def _probe(cwd: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MultiplexedPath" not in done.stderr
    return done.stdout.strip().splitlines()[-3:]


def test_text_tower_builds_beside_a_bare_surgray_folder(tmp_path):
    """A folder named surgray without __init__.py (data, an output folder) shadows the name."""
    (tmp_path / "surgray" / "assets").mkdir(parents=True)
    vocab, module, tokens = _probe(tmp_path)
    assert Path(module).is_relative_to(REPO / "surgray")
    assert Path(vocab) == REPO / "surgray" / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    assert int(tokens) >= 3  # start, words, end


def test_text_tower_builds_inside_another_copy_of_the_tree(tmp_path):
    """Another clone: its own code runs, with its own assets."""
    clone = tmp_path / "clone"
    shutil.copytree(
        REPO / "surgray",
        clone / "surgray",
        ignore=shutil.ignore_patterns("__pycache__", "*.pt"),
    )
    vocab, module, tokens = _probe(clone)
    assert Path(module).is_relative_to(clone / "surgray")
    assert Path(vocab).is_relative_to(clone / "surgray" / "assets")
    assert int(tokens) >= 3


@pytest.mark.parametrize("folder", ["bare", "clone"])
def test_shipped_checkpoint_paths_follow_the_running_code(tmp_path, folder):
    """`demo:` checkpoints are located the same way (beside the code, not through the name)."""
    if folder == "bare":
        (tmp_path / "surgray").mkdir()
        root = REPO
    else:
        shutil.copytree(
            REPO / "surgray", tmp_path / "surgray", ignore=shutil.ignore_patterns("__pycache__")
        )
        root = tmp_path
    code = "from surgray.model.checkpoints.sam2_checkpoint import shipped_checkpoint_path as p; print(p('demo:model'))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.is_relative_to(root / "surgray" / "assets" / "demo") and path.is_file()
