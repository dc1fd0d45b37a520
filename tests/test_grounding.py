"""Category probes: their two losses by hand, their config, and a referring step that uses them."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_referring import REFERRING, config_data

from surgray.data.categories import INSTRUMENT_CATEGORIES, TISSUE_CATEGORIES
from surgray.model.referring.category_probes import CategoryProbes
from surgray.model.sam2.frame_types import HeadsOutput
from surgray.train.config import TrainConfigError, parse_train_config
from surgray.train.grounding import pixel_category_loss, text_category_loss
from surgray.train.loop import WorkerLoop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCABULARY = list(INSTRUMENT_CATEGORIES + TISSUE_CATEGORIES)


def _probes(d_model=2, categories=3) -> CategoryProbes:
    probes = CategoryProbes(d_model, categories)
    with torch.no_grad():  # logits = the features' first coordinate times (0, 1, 2, ...)
        probes.text.weight.zero_()
        probes.text.weight[:, 0] = torch.arange(categories, dtype=torch.float32)
        probes.text.bias.zero_()
        probes.pixel.weight.zero_()
        probes.pixel.weight[:, 0, 0, 0] = torch.arange(categories + 1, dtype=torch.float32)
        probes.pixel.bias.zero_()
    return probes.requires_grad_(False)


def _nll(x: float, target: int, classes: int) -> float:
    """Cross-entropy of logits (0, x, 2x, ...) for `target`, by hand."""
    logits = [k * x for k in range(classes)]
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def _heads(tokens: torch.Tensor) -> HeadsOutput:
    n = tokens.shape[0]
    empty = torch.zeros(n, 1)
    return HeadsOutput(empty, empty, empty, empty, empty, empty[:, 0], empty, empty, tokens)


def test_text_category_loss_by_hand():
    probes = _probes()
    # Two objects (categories 2 and unknown), two tokens each, on two frames.
    frame_a = torch.tensor([[[1.0, 5.0], [0.5, -1.0]], [[9.0, 9.0], [9.0, 9.0]]])
    frame_b = torch.tensor([[[-1.0, 0.0], [2.0, 3.0]], [[9.0, 9.0], [9.0, 9.0]]])
    ids = torch.tensor([2, -1])
    loss = text_category_loss(probes, [_heads(frame_a), _heads(frame_b)], ids)
    expected_a = (_nll(1.0, 2, 3) + _nll(0.5, 2, 3)) / 2
    expected_b = (_nll(-1.0, 2, 3) + _nll(2.0, 2, 3)) / 2
    assert float(loss) == pytest.approx((expected_a + expected_b) / 2, rel=1e-6)
    assert float(text_category_loss(probes, [_heads(frame_a)], torch.tensor([-1, -1]))) == 0.0
    with pytest.raises(ValueError, match="fusion_tokens"):
        text_category_loss(probes, [HeadsOutput(*[torch.zeros(2, 1)] * 8)], ids)


def test_pixel_category_loss_by_hand():
    probes = _probes(categories=2)
    # A 1x2 map; the masks are at the same size, so no resampling happens.
    embed = torch.zeros(1, 2, 1, 2)
    embed[0, 0] = torch.tensor([[0.5, -2.0]])
    masks = torch.zeros(1, 2, 1, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True  # object of category 1 (class 2) on the left pixel
    ids = torch.tensor([1, 0])
    loss = pixel_category_loss(probes, [embed], masks, ids)
    expected = (_nll(0.5, 2, 3) + _nll(-2.0, 0, 3)) / 2  # the right pixel is background
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Pixels of an object whose category is unknown are left out.
    loss = pixel_category_loss(probes, [embed], masks, torch.tensor([-1, 0]))
    assert float(loss) == pytest.approx(_nll(-2.0, 0, 3), rel=1e-6)
    with pytest.raises(ValueError, match="1 feature maps for 2 mask frames"):
        pixel_category_loss(probes, [embed], masks.expand(2, -1, -1, -1), ids)


def test_pixel_category_loss_weighs_each_class_alike():
    probes = _probes(categories=2)
    # A 1x4 map: an object of category 0 (class 1) on one pixel, background on three.
    embed = torch.zeros(1, 2, 1, 4)
    embed[0, 0] = torch.tensor([[1.0, -1.0, 0.5, 2.0]])
    masks = torch.zeros(1, 1, 1, 4, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    loss = pixel_category_loss(probes, [embed], masks, torch.tensor([0]))
    background = (_nll(-1.0, 0, 3) + _nll(0.5, 0, 3) + _nll(2.0, 0, 3)) / 3
    assert float(loss) == pytest.approx((_nll(1.0, 1, 3) + background) / 2, rel=1e-6)
    # Two frames: each is balanced on its own, then the frames are averaged.
    two = pixel_category_loss(
        probes, [embed, embed], masks.expand(2, -1, -1, -1), torch.tensor([0])
    )
    assert float(two) == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize(
    "referring, loss, named",
    [
        (REFERRING, {"text_category": 1.0}, "set model.referring.grounding_categories"),
        (
            {**REFERRING, "grounding_categories": ["liver", "liver"]},
            {},
            "grounding_categories repeat a name",
        ),
    ],
)
def test_probe_configs_are_checked(tmp_path, referring, loss, named):
    data = config_data(tmp_path, loss=loss)
    data["model"]["referring"] = referring
    with pytest.raises(TrainConfigError, match=named):
        parse_train_config(data)


def test_a_referring_step_trains_the_probes(tmp_path):
    data = config_data(
        tmp_path,
        loss={"text_category": 1.0, "pixel_category": 1.0},
        sampling={"referring_fraction": 1.0},
    )
    data["model"]["referring"] = {**REFERRING, "grounding_categories": VOCABULARY}
    data["optim"]["trainable_prefixes"].append("category_probes.")
    loop = WorkerLoop(parse_train_config(data))
    try:
        probes = loop.model.category_probes
        assert probes.num_categories == len(VOCABULARY)
        parts, kind = loop.train_step(0)
        assert kind == "referring"
        assert parts["text_category"] > 0 and parts["pixel_category"] > 0
        weighted = parts["focal"] * 20 + parts["dice"] + parts["iou"] + parts["object_class"]
        weighted += 0.1 * parts["tsl"] + parts["text_category"] + parts["pixel_category"]
        assert parts["total"] == pytest.approx(weighted, rel=1e-5)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probes.parameters())
    finally:
        loop.close()
    # Without the probes' weights the same model trains as before: both terms stay 0.
    data["loss"] = {}
    loop = WorkerLoop(parse_train_config(data))
    try:
        parts, _ = loop.train_step(0)
        assert parts["text_category"] == 0.0 and parts["pixel_category"] == 0.0
    finally:
        loop.close()
