"""`surgray train --evaluate` says where it is while it scores (it ran for minutes without a
word): a line per predictor and per video, with the time per video and the time left."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_evaluate_prints_a_progress_line_per_predictor_and_video(capsys):
    from surgray.cli import main

    code = main([
        "train", "--config", str(REPO / "configs/train_demo.yaml"),
        "--evaluate", str(REPO / "surgray/assets/demo/model.pt"),
        "--eval-videos", "2", "--eval-frames", "5",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("[surgray train --evaluate]")]
    scoring = [line for line in lines if " scoring " in line]
    assert [re.search(r"scoring (\w+) \((\d)/3\)", s).groups() for s in scoring] == [
        ("model", "1"), ("repeat_first", "2"), ("empty", "3"),
    ]  # fmt: skip
    model = [line for line in lines if line.startswith("[surgray train --evaluate] model: ")]
    assert re.match(r".* model: 1/2 videos, \d+\.\d s/video, ETA \d+s$", model[0]), model
    assert re.match(r".* model: 2/2 videos, \d+\.\d s/video, done$", model[-1]), model
    # The progress comes before the results it leads to.
    assert out.index(scoring[0]) < out.index("checkpoint, mask prompt")


def test_training_shows_its_first_and_last_step_besides_every_log_every():
    from surgray.train.progress import line_due

    # A short run (--max-steps 7, log_every 25) used to print no progress line at all.
    assert [s for s in range(1, 8) if line_due(s, 0, 7, 25)] == [1, 7]
    # Resumed at step 10 of 60: at once, then every 25, then the last step.
    assert [s for s in range(11, 61) if line_due(s, 10, 60, 25)] == [11, 25, 50, 60]
