"""Fast mode: precision names, int8 linear layers, and the precision option of the tracker, the
annotate job's config and Serve's model loading (micro model, random weights, 64x64 frames).

Speed and fidelity on real sizes are measured by benchmarks/bench_fast_mode.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from devtools.sam2_reference import randomize_
from surgray.model.checkpoints.variants import micro_config
from surgray.model.quantize import Int8Linear, full_range_activations, quantize_linears
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.precision import (
    PrecisionError,
    normalize_precision,
    resolve_precision,
)
from surgray.tracking.tracker import Tracker

SIZE = 64


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    torch.set_num_threads(1)
    net = SAM2Model(micro_config(SIZE))
    randomize_(net, 3)
    return net.eval()


def scene(t: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[..., 0] = (40 + 30 * np.sin(xx / 9.0)).astype(np.uint8)
    img[..., 2] = 90
    cx, cy = 28 + 1.5 * t, 30 + np.sin(t / 3) * 4
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < 100] = (220, 200, 60)
    return img


def track(tracker: Tracker, frames: int = 6) -> list[np.ndarray]:
    state = tracker.start("v", (SIZE, SIZE), num_frames=frames)
    tracker.add_box(state, 1, 0, (16, 18, 40, 42))
    return [tracker.step(state, scene(t)).masks()[0] for t in range(frames)]


def test_precision_names_and_plans():
    assert normalize_precision(" BFloat16 ") == "bf16"
    assert normalize_precision("float32") == "fp32"
    with pytest.raises(PrecisionError, match="precision 'int3': use one of fp32, bf16"):
        normalize_precision("int3")
    assert resolve_precision("fp32", "cpu").exact
    assert resolve_precision("bf16", "cpu").autocast_dtype == torch.bfloat16
    fast = resolve_precision("fast", "cpu")
    assert fast.int8_linears and fast.autocast_dtype is None  # the measured CPU fast mode
    assert fast.int8_attention == full_range_activations()  # int8 attention needs VNNI
    cuda_fast = resolve_precision("fast", "cuda")
    assert cuda_fast.autocast_dtype == torch.bfloat16 and not cuda_fast.int8_linears
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(PrecisionError, match="int8 runs on CPU only"):
        resolve_precision("int8", "cuda")


def test_int8_linear_is_close_to_the_float_layer_and_keeps_its_bias_tensor():
    torch.manual_seed(0)
    linear = nn.Linear(96, 160)
    q = Int8Linear(linear)
    x = torch.randn(2, 7, 5, 96)
    with torch.inference_mode():
        expected, got = linear(x), q(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    rel = float((got - expected).norm() / expected.norm())
    assert 0 < rel < 0.02, rel  # quantized (not a copy), yet close
    assert isinstance(q.bias, torch.Tensor) and torch.equal(q.bias, linear.bias.detach())
    with torch.inference_mode():  # a zero token projects to the bias, as Hiera's padding assumes
        assert torch.allclose(q(torch.zeros(1, 96)), linear.bias.detach()[None], atol=1e-6)


def test_quantize_linears_replaces_only_the_named_parts(model):
    net = SAM2Model(micro_config(SIZE))
    net.load_state_dict(model.state_dict())
    replaced = quantize_linears(net)
    assert replaced and all(
        n.startswith(("image_encoder.trunk.", "memory_attention.")) for n in replaced
    )
    kinds = {name: type(m) for name, m in net.named_modules()}
    assert all(kinds[name] is Int8Linear for name in replaced)
    assert any(k is nn.Linear and n.startswith("sam_mask_decoder") for n, k in kinds.items())


def test_int8_tracker_runs_a_quantized_copy_and_stays_close_to_fp32(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exact = track(Tracker(model, precision="fp32", postprocess={"fill_hole_area": 0}))
    fast_tracker = Tracker(model, precision="fast", postprocess={"fill_hole_area": 0})
    assert fast_tracker.model is not model
    assert any(isinstance(m, Int8Linear) for m in fast_tracker.model.modules())
    fast = track(fast_tracker)
    for key, value in model.state_dict().items():  # the caller's float model is untouched
        assert torch.equal(value, before[key]), key
    assert all(m.any() for m in exact), "fp32 lost the object: nothing to compare"
    agreement = np.mean([(a == b).mean() for a, b in zip(exact, fast)])
    assert agreement > 0.95, agreement


def test_bf16_tracker_runs_under_autocast(model):
    tracker = Tracker(model, precision="bf16", postprocess={"fill_hole_area": 0})
    assert tracker.autocast_dtype == torch.bfloat16 and tracker.model is model
    masks = track(tracker, frames=3)
    assert len(masks) == 3 and masks[0].shape == (SIZE, SIZE)


def test_annotate_config_checks_and_normalizes_precision():
    from surgray.annotate.config import ModelSection

    assert ModelSection(checkpoint="demo:model", precision="bfloat16").precision == "bf16"
    assert ModelSection(checkpoint="demo:model", precision="fast").precision == "fast"
    with pytest.raises(ValueError, match="precision 'int4'"):
        ModelSection(checkpoint="demo:model", precision="int4")


def test_serve_loads_a_fast_model_and_refuses_fp16_on_cpu():
    from surgray.serving.config import ServedModel
    from surgray.serving.model_loading import ModelLoadError, load_served_model

    loaded = load_served_model(
        ServedModel(variant="micro", checkpoint="random:0", image_size=SIZE, precision="fast"),
        device="cpu",
    )
    assert loaded.tracker.precision.int8_linears
    with pytest.raises(ModelLoadError, match="fp16 needs a CUDA device"):
        load_served_model(
            ServedModel(variant="micro", checkpoint="random:0", image_size=SIZE, precision="fp16"),
            device="cpu",
        )


def test_int8_tracker_built_under_inference_mode_still_steps(model):
    with torch.inference_mode():
        tracker = Tracker(model, precision="int8", postprocess={"fill_hole_area": 0})
    assert len(track(tracker, frames=2)) == 2
