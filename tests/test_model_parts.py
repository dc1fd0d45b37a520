"""The SAM2 network's parts (`SamHeads`, `MemoryReadout`, `MemoryWriter`, `ObjectPointerHead`)
hold only what they use, never the whole model, and always the model's current tensors."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from surgray.model.checkpoints.variants import micro_config
from surgray.model.sam2.heads import SamHeads
from surgray.model.sam2.memory_readout import MemoryReadout
from surgray.model.sam2.memory_writer import MemoryWriter
from surgray.model.sam2.network import SAM2Model
from surgray.model.sam2.object_pointer import ObjectPointerHead

SIZE = 64


def _model() -> SAM2Model:
    torch.manual_seed(0)
    return SAM2Model(micro_config(SIZE)).eval()


def _values(part) -> list:
    return [getattr(part, f.name) for f in dataclasses.fields(part)]


def test_parts_never_hold_the_whole_model():
    model = _model()
    parts = [model.sam_heads, model.memory_readout, model.memory_writer, model.pointer_head]
    assert [type(p) for p in parts] == [SamHeads, MemoryReadout, MemoryWriter, ObjectPointerHead]
    for part in parts:
        for value in _values(part):
            assert not isinstance(value, SAM2Model), f"{type(part).__name__} holds the model"
            if isinstance(value, ObjectPointerHead):
                assert not any(isinstance(v, SAM2Model) for v in _values(value))


def test_parts_hold_the_models_own_parameters():
    model = _model()
    readout, pointer = model.memory_readout, model.pointer_head
    assert readout.maskmem_tpos_enc is model.maskmem_tpos_enc
    assert readout.no_mem_embed is model.no_mem_embed
    assert readout.attention is model.memory_attention
    assert pointer.proj is model.obj_ptr_proj and pointer.no_obj_ptr is model.no_obj_ptr
    assert model.memory_writer.encoder is model.memory_encoder
    assert model.sam_heads.mask_decoder is model.sam_mask_decoder


@torch.no_grad()
def test_parts_see_tensors_a_load_with_assign_puts_in_place():
    """Handed out per call: a part taken after `load_state_dict(assign=True)` (which swaps the
    parameter objects) reads the new tensors, and the outputs follow them."""
    model = _model()
    features = model.encode_frames(torch.rand(1, 3, SIZE, SIZE))[0]
    before = model.predict_masks(features, None, None, multimask=False).obj_ptr
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["no_mem_embed"] = state["no_mem_embed"] + 1.0
    state["obj_ptr_proj.layers.2.bias"] = state["obj_ptr_proj.layers.2.bias"] + 1.0
    state["no_obj_ptr"] = state["no_obj_ptr"] + 1.0  # present or absent: the pointer moves
    old = model.no_mem_embed
    model.load_state_dict(state, assign=True)
    assert model.no_mem_embed is not old
    assert model.memory_readout.no_mem_embed is model.no_mem_embed
    after = model.predict_masks(features, None, None, multimask=False).obj_ptr
    assert not torch.allclose(before, after)


@torch.no_grad()
def test_memory_writer_follows_the_mode_it_is_given():
    """Training keeps soft prompted masks; inference binarises them (`from_prompts`)."""
    model = _model()
    features = model.encode_frames(torch.rand(1, 3, SIZE, SIZE))[0]
    logits = torch.randn(1, 1, SIZE, SIZE) * 3
    score = torch.ones(1, 1)
    prompted = torch.ones(1, dtype=torch.bool)
    writer = model.memory_writer
    inference = writer.encode(features.image_embed, logits, score, prompted, training=False)
    training = writer.encode(features.image_embed, logits, score, prompted, training=True)
    assert inference.shape == training.shape == (1, model.mem_dim, SIZE // 16, SIZE // 16)
    assert not torch.equal(inference, training)
    assert isinstance(model.memory_writer.encoder, nn.Module)
