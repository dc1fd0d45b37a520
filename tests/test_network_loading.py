"""`load_network`: the one place a checkpoint becomes a network, for Serve and the annotate job."""

from __future__ import annotations

import hashlib

import pytest
import torch
from _referring_fixtures import tiny_referring_config

from devtools.sam2_reference import randomize_
from surgray.annotate.actor import load_model
from surgray.annotate.config import AnnotateConfig
from surgray.annotate.provenance import checkpoint_sha256
from surgray.demo_inputs import DEMO_ASSETS
from surgray.io.storage import LOCAL
from surgray.model.checkpoints.network_loading import load_network
from surgray.model.checkpoints.referring_checkpoint import (
    save_referring_checkpoint,
    to_resurgsam2_layout,
)
from surgray.model.checkpoints.sam2_checkpoint import CheckpointError, save_checkpoint
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.sam2.network import SAM2Model


@pytest.fixture(scope="module")
def referring_model() -> ReSurgSAM2:
    torch.set_num_threads(1)
    model = ReSurgSAM2(micro_config(64), tiny_referring_config(text_encoder="/clip/saved"))
    randomize_(model, 5)
    return model


def test_a_referring_checkpoint_takes_the_callers_text_encoder_folder(referring_model, tmp_path):
    path = tmp_path / "referring.pt"
    save_referring_checkpoint(referring_model, path)
    saved = load_network(path, "micro", image_size=64)
    assert isinstance(saved, ReSurgSAM2)
    assert saved.referring_cfg.text_encoder == "/clip/saved"
    assert saved.text_encoder is None  # the folder is the caller's to load, when it needs it
    moved = load_network(path, "micro", image_size=64, text_encoder="/clip/elsewhere")
    assert moved.referring_cfg.text_encoder == "/clip/elsewhere"
    for name, value in referring_model.state_dict().items():
        assert torch.equal(moved.state_dict()[name], value), name


def test_a_plain_sam2_checkpoint_is_a_sam2_model_and_serve_refuses_it_for_text(tmp_path):
    from surgray.serving.config import ServedModel
    from surgray.serving.model_loading import ModelLoadError, load_served_model

    model = SAM2Model(micro_config(64))
    path = tmp_path / "sam2.pt"
    save_checkpoint(model, path)
    assert type(load_network(path, "micro", image_size=64)) is SAM2Model
    # The annotate job gives each text-prompted video an error and tracks the others; a Serve
    # replica configured for text would have nothing to answer text with, so it does not start.
    assert type(load_network(path, "micro", image_size=64, text_encoder="/clip")) is SAM2Model
    served = ServedModel(variant="micro", checkpoint=str(path), image_size=64, text_encoder="/c")
    with pytest.raises(ModelLoadError, match="plain SAM2 checkpoint"):
        load_served_model(served, device="cpu")


def test_the_released_resurgsam2_layout_is_recognised_without_metadata(tmp_path):
    from surgray.model.referring.config import default_referring

    cfg = micro_config(64)
    model = ReSurgSAM2(cfg, default_referring(cfg))
    randomize_(model, 6)
    path = tmp_path / "released.pt"
    torch.save({"model": to_resurgsam2_layout(model.state_dict())}, path)
    loaded = load_network(path, "micro", image_size=64)
    assert isinstance(loaded, ReSurgSAM2)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_an_embedded_text_tower_refuses_a_separate_folder_in_both_jobs(tmp_path):
    loaded = load_network("demo:referring", "micro")
    assert isinstance(loaded, ReSurgSAM2) and loaded.text_tower is not None
    with pytest.raises(CheckpointError, match="embeds its own text tower"):
        load_network("demo:referring", "micro", text_encoder="/clip")
    # The annotate job used to drop the folder silently; it now refuses it as Serve does.
    model = {"variant": "micro", "image_size": 128, "checkpoint": "demo:referring"}
    config = AnnotateConfig.from_dict(
        {
            "inputs": {"prefix": str(tmp_path)},
            "output": {"prefix": str(tmp_path / "out")},
            "model": model | {"text_encoder": "/clip"},
            "prompts": ["the grasper"],
        }
    )
    with pytest.raises(CheckpointError, match="embeds its own text tower"):
        load_model(config, "cpu", storage=LOCAL)
    plain = config.model_copy(
        update={"model": config.model.model_copy(update={"text_encoder": None})}
    )
    assert load_model(plain, "cpu", storage=LOCAL).text_tower is not None


def test_annotate_hashes_a_shipped_checkpoint_by_name():
    expected = hashlib.sha256((DEMO_ASSETS / "model.pt").read_bytes()).hexdigest()
    assert checkpoint_sha256("demo:model", storage=LOCAL) == expected
    with pytest.raises(FileNotFoundError, match="shipped: demo:model, demo:referring"):
        checkpoint_sha256("demo:huge", storage=LOCAL)
