"""SAM2S TSL semantic head: shapes, gradients, the tau = 100 logit scale and the InfoNCE loss."""

from __future__ import annotations

import math

import pytest
import torch

from surgray.model.referring.semantic_head import SemanticHead, SemanticHeadConfig, tsl_loss

TINY = SemanticHeadConfig(d_model=32, memory_dim=16, text_dim=24, num_heads=2, mlp_dim=64)


@pytest.fixture()
def head():
    torch.manual_seed(0)
    return SemanticHead(TINY).eval()


def _inputs(batch=3, memory_tokens=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    current = torch.randn(batch, 32, 4, 4, generator=g)
    memory = torch.randn(batch, memory_tokens, 16, generator=g)
    return current, memory


def test_shapes_and_optional_memory(head):
    current, memory = _inputs()
    assert head(current, memory).shape == (3, 24)
    without = head(current)
    assert without.shape == (3, 24)
    torch.testing.assert_close(head(current, memory[:, :0]), without)  # no memory yet
    assert not torch.allclose(head(current, memory), without)


def test_memory_and_positions_change_the_embedding(head):
    current, memory = _inputs()
    base = head(current, memory)
    assert not torch.allclose(base, head(current, memory.flip(0)))
    pos = torch.randn_like(memory)
    assert not torch.allclose(base, head(current, memory, memory_pos=pos))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    head = SemanticHead(TINY)
    current, memory = _inputs()
    categories = torch.randn(5, 24)
    logits = head.logits(head(current, memory), categories)
    tsl_loss(logits, torch.tensor([0, 3, -1])).backward()
    dead = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_logit_scale_by_hand(head):
    embedding = torch.tensor([[2.0, 0.0] + [0.0] * 22], dtype=torch.float64)
    categories = torch.zeros(3, 24, dtype=torch.float64)
    categories[0, 0] = 5.0  # same direction: cos 1
    categories[1, 1] = 1.0  # orthogonal: cos 0
    categories[2, :2] = 1.0  # 45 degrees: cos 1/sqrt(2)
    pred = head.classify(embedding, categories)
    expected = torch.tensor([[100.0, 0.0, 70.71067811865476]], dtype=torch.float64)
    torch.testing.assert_close(pred.logits, expected, rtol=0, atol=1e-12)
    assert pred.index.tolist() == [0]
    p0 = 1.0 / (1.0 + math.exp(-100.0) + math.exp(70.71067811865476 - 100.0))
    assert pred.probability.item() == pytest.approx(p0, abs=1e-15)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(1, dtype=torch.float64))


def test_logit_scale_is_configurable():
    head = SemanticHead(TINY.model_copy(update={"logit_scale": 10.0}))
    e = torch.zeros(1, 24)
    e[0, 0] = 1.0
    assert head.logits(e, e).item() == pytest.approx(10.0)


def test_tsl_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [5.0, 1.0], [0.0, 0.0]], requires_grad=True)
    # Rows 0 and 1 count (targets 1 and 0); row 2 has no category.
    loss = tsl_loss(logits, torch.tensor([1, 0, -1]))
    expected = (math.log(1 + math.exp(2.0)) + math.log(1 + math.exp(-4.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    none = tsl_loss(logits, torch.tensor([-1, -1, -1]))
    assert none.item() == 0.0 and none.requires_grad


def test_bad_inputs_are_named(head):
    current, memory = _inputs()
    with pytest.raises(ValueError, match="current must be"):
        head(current[:, :8])
    with pytest.raises(ValueError, match="memory must be"):
        head(current, memory[..., :8])
    with pytest.raises(ValueError, match="category embeddings must be"):
        head.logits(torch.zeros(2, 24), torch.zeros(3, 7))
    with pytest.raises(ValueError, match="targets must be in"):
        tsl_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="logits must be"):
        tsl_loss(torch.zeros(2, 3), torch.tensor([0]))
