"""The state-dict key layout is a contract: official SAM2/SAM2.1 checkpoints, the shipped demo
checkpoints, released ReSurgSAM2 checkpoints and training checkpoints (optimizer state included,
which follows `named_parameters()` order) load by these names. This test compares today's
layout of two networks with a golden file written before the model was restructured.

Regenerate the golden only for a deliberate change of the contract:
`SURGRAY_WRITE_KEY_LAYOUT=1 .venv/bin/python -m pytest -q tests/test_checkpoint_key_layout.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from surgray.model.checkpoints.variants import get_variant, micro_config
from surgray.model.referring.config import ReferringConfig
from surgray.model.referring.cstmamba import CSTMambaConfig
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.referring.semantic_head import SemanticHeadConfig
from surgray.model.referring.text_pixel import TextPixelConfig
from surgray.model.sam2.network import SAM2Model
from surgray.model.text.tower import TextTowerConfig

GOLDEN = Path(__file__).parent / "fixtures" / "model_key_layout.json"


def _tiny() -> torch.nn.Module:
    with torch.device("meta"):  # shapes without memory or init time: 1024 px Hiera-T
        return SAM2Model(get_variant("sam2.1_hiera_tiny"))


def _referring() -> torch.nn.Module:
    """A ReSurgSAM2 with every optional part on, so each part's keys are covered."""
    referring = ReferringConfig(
        fusion=CSTMambaConfig.tiny(),
        semantic_head=SemanticHeadConfig(
            d_model=32, memory_dim=16, text_dim=32, num_heads=2, mlp_dim=64
        ),
        categories=("grasper", "needle driver"),
        grounding_categories=("grasper", "needle driver", "tissue"),
        text_pixel=TextPixelConfig(),
        text_tower=TextTowerConfig(),
    )
    return ReSurgSAM2(micro_config(64), referring)


NETWORKS = {"sam2.1_hiera_tiny": _tiny, "resurgsam2_micro": _referring}


def _layout(model: torch.nn.Module) -> list[str]:
    """One row per state-dict entry, in order: `key shape kind` (kind: param or buffer)."""
    params = {name for name, _ in model.named_parameters()}
    return [
        f"{key} {list(value.shape)} {'param' if key in params else 'buffer'}"
        for key, value in model.state_dict().items()
    ]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_state_dict_keys_and_parameter_order_are_unchanged(name):
    layout = _layout(NETWORKS[name]())
    if os.environ.get("SURGRAY_WRITE_KEY_LAYOUT") == "1":
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = layout
        GOLDEN.write_text(json.dumps(golden, indent=0, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())[name]
    assert layout == golden
    # The optimizer state of a training checkpoint is matched to parameters by position.
    model = NETWORKS[name]()
    in_order = [row.split(" ", 1)[0] for row in golden if row.endswith(" param")]
    assert [n for n, _ in model.named_parameters()] == in_order
