"""The shipped demo checkpoint (surgray/assets/demo/model.pt, trained by configs/train_demo.yaml):
it loads strictly and tracks a fixed held-out synthetic clip from a first-frame mask."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgray.io.storage import LOCAL
from surgray.model.checkpoints.sam2_checkpoint import load_checkpoint
from surgray.model.sam2.network import SAM2Model
from surgray.train.checkpoints import load_trained_model
from surgray.train.clip_data import open_videos
from surgray.train.config import TrainConfig
from surgray.train.validation import validate

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "surgray" / "assets" / "demo" / "model.pt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_recipe_is_a_fixed_number_of_steps():
    # A time limit would make the documented command's result depend on the machine's speed.
    config = TrainConfig.from_yaml(REPO / "configs" / "train_demo.yaml")
    assert config.schedule.time_limit_s is None and config.schedule.max_steps is None
    assert config.schedule.total_steps == 3600


def test_demo_checkpoint_loads_strictly_and_tracks_a_held_out_clip():
    model = load_trained_model(DEMO)
    assert (model.cfg.name, model.image_size) == ("micro", 128)
    report = load_checkpoint(SAM2Model(model.cfg), DEMO)  # strict: no key left out
    assert report.initialised == []
    config = TrainConfig.from_yaml(REPO / "configs" / "train_demo.yaml")
    clip = open_videos(config.data, "test", storage=LOCAL)[
        0
    ]  # the first held-out clip, never trained on
    tracked = validate([clip], model, max_videos=1, max_frames=24)
    repeated = validate([clip], None, max_videos=1, max_frames=24, predictor="repeat_first")
    assert tracked.objects == 4 and tracked.frames == 22
    assert tracked.jf >= 0.65
    assert tracked.jf >= repeated.jf + 0.15


REFERRING = REPO / "surgray" / "assets" / "demo" / "referring.pt"
# The shipped text head scores held-out J&F 0.516 from text on the test split (the demo's target
# is 0.50, see docs/demo-training.md) and 0.58 on this clip. One clip is too noisy for
# the split-level target: this bound guards the text path end to end (an all-empty or
# wrong-object answer scores near 0).
TEXT_BOUND_ON_CLIP = 0.40


def test_referring_demo_checkpoint_finds_objects_from_text_on_a_held_out_clip():
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    model = load_trained_model(REFERRING)
    assert isinstance(model, ReSurgSAM2) and model.text_tower is not None
    assert (model.cfg.name, model.image_size) == ("micro", 128)
    # Every key of the file is used and nothing is left at its fresh initialisation.
    rebuilt = ReSurgSAM2(model.cfg, model.referring_cfg)
    assert load_checkpoint(rebuilt, REFERRING).initialised == []
    config = TrainConfig.from_yaml(REPO / "configs" / "train_demo_referring.yaml")
    clip = open_videos(config.data, "test", storage=LOCAL)[0]
    from_text = validate([clip], model, max_videos=1, max_frames=24, predictor="text")
    from_mask = validate([clip], model, max_videos=1, max_frames=24)
    repeated = validate([clip], None, max_videos=1, max_frames=24, predictor="repeat_first")
    assert from_text.objects == 4 and from_text.skipped_objects == 0
    assert from_text.jf >= TEXT_BOUND_ON_CLIP
    assert from_mask.jf >= 0.65 and from_mask.jf >= repeated.jf + 0.15
