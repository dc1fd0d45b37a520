"""The complex RoPE kernel against the real form (cos/sin tables) and by hand, at inference
and under autograd (training)."""

from __future__ import annotations

import math

import pytest
import torch

from surgray.model.sam2.rope import AxialRotaryEmbedding


@pytest.mark.parametrize(("height", "width", "repeat", "exclude"), [(4, 4, 1, 0), (3, 5, 7, 4)])
def test_complex_kernel_is_the_real_form_bit_for_bit_at_model_head_width(
    height, width, repeat, exclude
):
    # Head width 256 (SAM2's memory attention): the pairs fill whole vector registers, and
    # the complex product is the same two products and one sum per channel as the real form.
    rope = AxialRotaryEmbedding(256)
    x = torch.randn(
        3, 1, height * width * repeat + exclude, 256, generator=torch.Generator().manual_seed(1)
    )
    num_rot = height * width * repeat
    with torch.inference_mode():
        fast = rope.rotate(x, height, width, repeat=repeat, num_exclude=exclude)
        real = rope.rotate_real(x, height, width, repeat, num_rot)
    assert torch.equal(fast, real)
    assert torch.equal(fast[..., num_rot:, :], x[..., num_rot:, :])


def test_small_head_width_within_one_ulp_of_the_real_form():
    # Pairs that do not fill a vector go through the scalar tail, which may fuse a multiply-add.
    rope = AxialRotaryEmbedding(4)
    x = torch.randn(2, 1, 3 * 5 * 2 + 3, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = rope.rotate(x, 3, 5, repeat=2, num_exclude=3)
        real = rope.rotate_real(x, 3, 5, 2, 30)
    torch.testing.assert_close(fast, real, rtol=0, atol=4e-7)


def test_hand_computed_rotation_of_one_token():
    # Token 5 of a 2x3 map: column 2, row 1. Head width 8 has frequencies 1 and 0.01, so the
    # pairs turn by 2, 0.02 (x) and 1, 0.01 (y) radians.
    rope = AxialRotaryEmbedding(8)
    x = torch.zeros(1, 6, 8)
    x[0, 5] = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    with torch.no_grad():
        out = rope.rotate(x, 2, 3)[0, 5]
    c, s = math.cos, math.sin
    expected = [c(2), s(2), -s(0.02), c(0.02), 2 * c(1), 2 * s(1)]
    expected += [c(0.01) - s(0.01), s(0.01) + c(0.01)]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=1e-6)
    assert torch.count_nonzero(rope.rotate(x, 2, 3)[0, :5]) == 0


def test_autograd_matches_the_real_form():
    rope = AxialRotaryEmbedding(16)
    base = torch.randn(2, 2, 4 * 4 * 3 + 5, 16, generator=torch.Generator().manual_seed(3))
    weight = torch.randn(base.shape, generator=torch.Generator().manual_seed(4))
    grads = []
    outputs = []
    for complex_kernel in (True, False):
        x = base.clone().requires_grad_(True)
        if complex_kernel:
            y = rope.rotate(x, 4, 4, repeat=3, num_exclude=5)
        else:
            y = rope.rotate_real(x, 4, 4, 3, 48)
        (y * weight).sum().backward()
        outputs.append(y.detach())
        grads.append(x.grad)
    assert torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)
    # A rotation's gradient is the inverse rotation of the upstream gradient; pointers pass.
    assert torch.equal(grads[0][..., 48:, :], weight[..., 48:, :])


def test_odd_storage_offset_takes_the_real_form():
    # A view starting at an odd float cannot be seen as complex pairs; same numbers anyway.
    rope = AxialRotaryEmbedding(4)
    flat = torch.randn(1 + 4 * 4, generator=torch.Generator().manual_seed(5))
    x = flat[1:].view(4, 4)
    assert x.storage_offset() == 1
    with torch.no_grad():
        torch.testing.assert_close(
            rope.rotate(x, 2, 2), rope.rotate_real(x, 2, 2, 1, 4), rtol=0, atol=0
        )


def test_inplace_rotation_overwrites_only_when_autograd_is_off():
    rope = AxialRotaryEmbedding(16)
    x = torch.randn(2, 1, 4 * 2 + 3, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = rope.rotate_real(x, 2, 2, 2, 8)
        owned = x.clone()
        out = rope.rotate(owned, 2, 2, repeat=2, num_exclude=3, inplace=True)
    assert out.data_ptr() == owned.data_ptr()
    assert torch.equal(out, expected)
    leaf = x.clone().requires_grad_(True)
    out = rope.rotate(leaf, 2, 2, repeat=2, num_exclude=3, inplace=True)
    assert out.data_ptr() != leaf.data_ptr() and torch.equal(leaf.detach(), x)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
