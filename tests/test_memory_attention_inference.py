"""Memory attention's inference-only fast paths against Meta's `sam2`.

At inference (eval, no grad) our memory attention shares the first layer's self-attention
across objects whose query rows are one frame's features expanded, and rotates keys into one
buffer. Each path is compared with the reference on the same inputs; the grad-enabled path
(training: nothing shared) is compared too.
"""

from __future__ import annotations

import pytest
import torch
from test_memory_modules import _official_attention_cfg, _randomise, _ref_memory_attention

from surgray.model.sam2.memory_attention import MemoryAttention
from surgray.model.sam2.rope import AxialRotaryEmbedding

SIDE, FRAMES, PTR_TOKENS, OBJECTS = 8, 3, 8, 3


def _pair(seed: int = 0) -> tuple[MemoryAttention, torch.nn.Module]:
    cfg = _official_attention_cfg()
    ref = _ref_memory_attention(cfg, SIDE).eval()
    _randomise(ref, seed)
    ours = MemoryAttention(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    length, tokens = SIDE * SIDE, FRAMES * SIDE * SIDE + PTR_TOKENS
    curr = torch.randn(1, length, 256, generator=gen).expand(OBJECTS, -1, -1)
    curr_pos = torch.randn(1, length, 256, generator=gen).expand(OBJECTS, -1, -1)
    memory = torch.randn(OBJECTS, tokens, 64, generator=gen)
    memory_pos = torch.randn(OBJECTS, tokens, 64, generator=gen)
    return curr, curr_pos, memory, memory_pos


def _reference(ref, curr, curr_pos, memory, memory_pos) -> torch.Tensor:
    with torch.no_grad():
        return ref(
            curr=curr.transpose(0, 1),
            memory=memory.transpose(0, 1),
            curr_pos=curr_pos.transpose(0, 1),
            memory_pos=memory_pos.transpose(0, 1),
            num_obj_ptr_tokens=PTR_TOKENS,
        ).transpose(0, 1)


def test_objects_of_one_frame_match_reference_at_inference():
    ours, ref = _pair()
    inputs = _inputs()
    assert inputs[0].stride(0) == 0  # the shared-first-layer path is the one taken
    expected = _reference(ref, *inputs)
    with torch.no_grad():
        got = ours(*inputs, num_obj_ptr_tokens=PTR_TOKENS)
    assert got.shape == (OBJECTS, SIDE * SIDE, 256)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # memories tell the objects apart
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shared_first_self_attention_runs_once_for_all_objects():
    ours, _ = _pair()
    calls: dict[str, list[int]] = {"first": [], "second": [], "cross": []}
    for name, module in (
        ("first", ours.layers[0].self_attn),
        ("second", ours.layers[1].self_attn),
        ("cross", ours.layers[0].cross_attn_image),
    ):
        module.register_forward_hook(lambda m, a, o, name=name: calls[name].append(o.shape[0]))
    with torch.no_grad():
        ours(*_inputs(), num_obj_ptr_tokens=PTR_TOKENS)
    # One self-attention over the frame shared by the 3 objects; from the first
    # cross-attention on, each object's row is its own.
    assert calls == {"first": [1], "second": [OBJECTS], "cross": [OBJECTS]}


def test_contiguous_rows_and_grad_path_match_reference():
    ours, ref = _pair()
    curr, curr_pos, memory, memory_pos = _inputs()
    expected = _reference(ref, curr, curr_pos, memory, memory_pos)
    with torch.no_grad():
        got = ours(curr.contiguous(), curr_pos.contiguous(), memory, memory_pos, PTR_TOKENS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Training path (batched, nothing shared): gradients flow, same numbers.
    memory = memory.clone().requires_grad_(True)
    got = ours(curr, curr_pos, memory, memory_pos, PTR_TOKENS)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0


def test_inference_path_can_fail():
    ours, ref = _pair()
    inputs = _inputs()
    expected = _reference(ref, *inputs)
    with torch.no_grad():
        ours.layers[0].cross_attn_image.v_proj.bias[0] += 1e-2
        assert (ours(*inputs, num_obj_ptr_tokens=PTR_TOKENS) - expected).abs().max() > 1e-4


@pytest.mark.parametrize(("repeat", "exclude"), [(1, 0), (3, 5)])
def test_key_rotation_into_one_buffer_is_the_same_rotation(repeat, exclude):
    # cos(1) / sin(1) by hand: token 1 of a 1x2 map sits at column 1, so with head_dim 4 its
    # first pair (x frequency 1) turns by 1 rad; the second pair (row 0) does not turn.
    rope = AxialRotaryEmbedding(4)
    x = torch.zeros(1, 1, 2 * repeat + exclude, 4)
    x[..., 1::2, :] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    x[..., 2 * repeat :, :] = 7.0
    with torch.no_grad():
        out = rope.rotate(x, 1, 2, repeat=repeat, num_exclude=exclude)
    cos1, sin1 = 0.5403023058681398, 0.8414709848078965
    for r in range(repeat):
        torch.testing.assert_close(
            out[0, 0, 2 * r + 1], torch.tensor([cos1, sin1, 1.0, 0.0]), rtol=0, atol=1e-6
        )
    assert torch.equal(out[..., 2 * repeat :, :], x[..., 2 * repeat :, :])
