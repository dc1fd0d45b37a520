"""The shipped demo checkpoint (surgray/assets/demo/model.pt, trained by configs/train_demo.yaml):
it loads strictly and tracks a fixed held-out synthetic clip from a first-frame mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surgray.model.checkpoint import load_checkpoint
from surgray.model.sam2 import SAM2Model
from surgray.train.checkpoints import load_trained_model
from surgray.train.clip_data import open_videos
from surgray.train.config import TrainConfig
from surgray.train.validation import validate

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "surgray" / "assets" / "demo" / "model.pt"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_checkpoint_loads_strictly_and_tracks_a_held_out_clip():
    model = load_trained_model(DEMO)
    assert (model.cfg.name, model.image_size) == ("micro", 128)
    report = load_checkpoint(SAM2Model(model.cfg), DEMO)  # strict: no key left out
    assert report.initialised == []
    config = TrainConfig.from_yaml(REPO / "configs" / "train_demo.yaml")
    clip = open_videos(config.data, "test")[0]  # the first held-out clip, never trained on
    tracked = validate([clip], model, max_videos=1, max_frames=24)
    repeated = validate([clip], None, max_videos=1, max_frames=24, predictor="repeat_first")
    assert tracked.objects == 4 and tracked.frames == 22
    assert tracked.jf >= 0.65
    assert tracked.jf >= repeated.jf + 0.15
