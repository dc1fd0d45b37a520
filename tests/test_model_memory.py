"""Loading and fast mode without extra copies: the int8 copy shares nothing with the float
model and changes nothing in it, and gives the same numbers as quantizing a full copy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from devtools.sam2_reference import randomize_
from surgray.model.checkpoints.memory_release import release_free_heap
from surgray.model.checkpoints.network_loading import load_network
from surgray.model.checkpoints.sam2_checkpoint import save_checkpoint
from surgray.model.checkpoints.variants import micro_config
from surgray.model.quantize import int8_supported, quantize_linears
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.precision import apply_precision, resolve_precision

SIZE = 64
needs_int8 = pytest.mark.skipif(not int8_supported(), reason="no quantized CPU engine")


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    torch.manual_seed(0)
    net = SAM2Model(micro_config(SIZE))
    randomize_(net, seed=3)
    return net.eval()


def _storages(module: nn.Module) -> set[int]:
    tensors = list(module.parameters()) + list(module.buffers())
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


@needs_int8
def test_int8_copy_shares_no_tensor_and_leaves_the_float_model_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = apply_precision(model, resolve_precision("int8", "cpu"))
    assert quantized is not model
    assert not _storages(quantized) & _storages(model)
    assert not any(type(m) is nn.Linear for m in quantized.image_encoder.trunk.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(type(m) is nn.Linear for m in model.image_encoder.trunk.modules())


@needs_int8
def test_int8_copy_computes_what_a_quantized_full_copy_computes(model):
    full = copy.deepcopy(model).eval()
    quantize_linears(full)
    lean = apply_precision(model, resolve_precision("int8", "cpu"))
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = full.image_encoder.trunk(images)
        got = lean.image_encoder.trunk(images)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_loading_a_checkpoint_gives_its_weights_and_trims_the_heap(model, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(model, str(path))
    loaded = load_network(str(path), "micro", image_size=SIZE)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert isinstance(release_free_heap(), bool)
