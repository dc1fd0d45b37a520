"""CSTMamba fusion, its three-scan Mamba (checked against mambapy) and the sensory memory."""

from __future__ import annotations

import pytest
import torch

from surgray.model.referring.cstmamba import (
    CSTMamba,
    CSTMambaConfig,
    SensoryMemory,
    _temporal_slots,
)
from surgray.model.referring.mamba import GRN, SpatioTemporalMamba
from surgray.model.text.encoder import TextFeatures

C = 32  # CSTMambaConfig.tiny().d_model


def _text(n=2, length=5, seed=0, lengths=None) -> TextFeatures:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, length, C, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    if lengths is not None:
        for i, k in enumerate(lengths):
            mask[i, k:] = False
            tokens[i, k:] = 0
    return TextFeatures(tokens=tokens, mask=mask, pooled=torch.randn(n, C, generator=g))


def _frame(seed, batch=1, h=4, w=3):
    return torch.randn(batch, C, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fusion():
    torch.manual_seed(0)
    return CSTMamba(CSTMambaConfig.tiny()).eval()


@pytest.mark.parametrize("num_history", [0, 1, 2])
def test_shapes(fusion, num_history):
    history = [_frame(10 + i) for i in range(num_history)]
    out = fusion(_text(n=3), _frame(1), history)
    assert out.image_features.shape == (3, C, 4, 3)
    assert out.sparse_tokens.shape == (3, 2, C)
    assert torch.isfinite(out.image_features).all()


def test_without_text_emb_only_the_class_token_is_sparse():
    torch.manual_seed(0)
    model = CSTMamba(CSTMambaConfig.tiny().model_copy(update={"forward_text_emb": False})).eval()
    assert model.language_fusion_mlp is None
    assert model(_text(), _frame(1)).sparse_tokens.shape == (2, 1, C)


def test_missing_history_is_the_current_frame_repeated(fusion):
    current = _frame(1)
    alone = fusion(_text(), current)
    repeated = fusion(_text(), current, [current, current])
    assert torch.equal(alone.image_features, repeated.image_features)
    assert torch.equal(alone.sparse_tokens, repeated.sparse_tokens)
    # ... and history does change the result.
    other = fusion(_text(), current, [_frame(2), _frame(3)])
    assert not torch.allclose(alone.image_features, other.image_features)


def _relative_spread(x: torch.Tensor) -> float:
    """Mean distance of the rows of x from their mean, relative to their mean norm."""
    x = x.flatten(1)
    return float((x - x.mean(0)).norm(dim=1).mean() / x.norm(dim=1).mean())


def test_fan_in_init_keeps_the_text_visible_in_a_narrow_fusion():
    def build(init_std):
        torch.manual_seed(0)
        return CSTMamba(CSTMambaConfig.tiny().model_copy(update={"init_std": init_std})).eval()

    reference, fan_in = build(0.02), build(None)
    for name, module in fan_in.named_modules():
        if isinstance(module, torch.nn.Linear) and ".mamba." not in f".{name}.":
            assert module.weight.std().item() == pytest.approx(module.in_features**-0.5, rel=0.2)
    assert reference.token_projection.layers[0].weight.std().item() == pytest.approx(0.02, rel=0.2)

    # Eight different texts on one frame: with 0.02 the fused outputs barely depend on the text.
    text, frame = _text(n=8, seed=3), _frame(4)
    with torch.no_grad():
        small, scaled = reference(text, frame), fan_in(text, frame)
    assert _relative_spread(small.sparse_tokens[:, 0]) < 0.05
    assert _relative_spread(scaled.sparse_tokens[:, 0]) > 0.15
    assert _relative_spread(small.image_features) < 0.01
    assert _relative_spread(scaled.image_features) > 0.05
    assert small.sparse_tokens[:, 1].norm(dim=-1).max() < 1e-2
    assert scaled.sparse_tokens[:, 1].norm(dim=-1).min() > 0.1


def test_temporal_slots_follow_the_reference_rule():
    # Released ReSurgSAM2: with 3 slots, the first of each group (padding / history) is 1.
    assert _temporal_slots(2, 3) == [1, 2]
    assert _temporal_slots(1, 3) == [1]
    assert _temporal_slots(3, 5) == [1, 2, 3]


def test_text_padding_does_not_leak(fusion):
    batch = _text(n=2, length=6, seed=4, lengths=[6, 3])
    out = fusion(batch, _frame(1), [_frame(2)])
    for i, k in enumerate([6, 3]):
        single = TextFeatures(
            batch.tokens[i : i + 1, :k], batch.mask[i : i + 1, :k], batch.pooled[i : i + 1]
        )
        ref = fusion(single, _frame(1), [_frame(2)])
        torch.testing.assert_close(out.image_features[i : i + 1], ref.image_features)
        torch.testing.assert_close(out.sparse_tokens[i : i + 1], ref.sparse_tokens)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = CSTMamba(CSTMambaConfig.tiny())
    model.train()
    out = model(_text(), _frame(1), [_frame(2), _frame(3)])
    (out.image_features.square().mean() + out.sparse_tokens.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    model.zero_grad()
    model.eval()  # no drop path: every gradient must also be non-zero
    out = model(_text(), _frame(1), [_frame(2), _frame(3)])
    (out.image_features.square().mean() + out.sparse_tokens.square().mean()).backward()
    dead = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not dead


def test_drop_path_rises_over_the_mamba_layers():
    model = CSTMamba(CSTMambaConfig.tiny())
    rates = [m.drop_path.drop_prob for block in model.layers for m in block.mamba_layers]
    assert rates == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(_text(), torch.zeros(1, C + 1, 4, 3)), "current features"),
        (
            lambda m: m(
                TextFeatures(torch.zeros(1, 4, 7), torch.ones(1, 4), torch.zeros(1, 7)), _frame(1)
            ),
            "text tokens",
        ),
        (lambda m: m(_text(), _frame(1), [_frame(2)] * 3), "history frames"),
        (lambda m: m(_text(), _frame(1), [_frame(2, h=5)]), "history\\[0\\]"),
    ],
)
def test_bad_inputs_are_named(fusion, call, message):
    with pytest.raises(ValueError, match=message):
        call(fusion)


# ------------------------------------------------------------------ the Mamba


def _mambapy_block(mamba: SpatioTemporalMamba, suffix: str):
    """A mambapy MambaBlock holding our shared projections and one scan's parameters."""
    from mambapy.mamba import MambaBlock, MambaConfig

    cfg = MambaConfig(
        d_model=mamba.d_model,
        n_layers=1,
        d_state=mamba.d_state,
        expand_factor=mamba.d_inner // mamba.d_model,
        dt_rank=mamba.dt_rank,
    )
    block = MambaBlock(cfg)
    with torch.no_grad():
        block.in_proj.weight.copy_(mamba.in_proj.weight)
        block.out_proj.weight.copy_(mamba.out_proj.weight)
        for ours, theirs in [("conv1d", "conv1d"), ("x_proj", "x_proj"), ("dt_proj", "dt_proj")]:
            block.get_submodule(theirs).load_state_dict(getattr(mamba, ours + suffix).state_dict())
        block.A_log.copy_(getattr(mamba, f"A{suffix}_log"))
        block.D.copy_(getattr(mamba, f"D{suffix}"))
    return block


def test_three_scans_equal_mambapy_on_flipped_and_reordered_sequences():
    torch.manual_seed(0)
    mamba = SpatioTemporalMamba(8, d_state=4, expand=2)
    with torch.no_grad():  # make the three scans' parameters clearly different
        for suffix in ("_b", "_s"):
            for p in (getattr(mamba, f"x_proj{suffix}").weight, getattr(mamba, f"A{suffix}_log")):
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 2 * 3, 8)  # T=2 frames of H*W=3 tokens
    # Temporal-major order worked out by hand: (loc0,t0), (loc0,t1), (loc1,t0), ...
    perm = [0, 3, 1, 4, 2, 5]
    inverse = [perm.index(i) for i in range(6)]
    forward = _mambapy_block(mamba, "")(x)
    backward = _mambapy_block(mamba, "_b")(x.flip(1)).flip(1)
    temporal = _mambapy_block(mamba, "_s")(x[:, perm])[:, inverse]
    expected = (forward + backward + temporal) / 3
    torch.testing.assert_close(mamba(x, (2, 1, 3)), expected, rtol=1e-4, atol=1e-5)


def test_the_three_scans_see_different_orders():
    torch.manual_seed(0)
    mamba = SpatioTemporalMamba(8, d_state=4)
    with torch.no_grad():  # identical parameters: only the order differs
        for suffix in ("_b", "_s"):
            for name in ("conv1d", "x_proj", "dt_proj"):
                getattr(mamba, name + suffix).load_state_dict(getattr(mamba, name).state_dict())
            getattr(mamba, f"A{suffix}_log").copy_(mamba.A_log)
            getattr(mamba, f"D{suffix}").copy_(mamba.D)
    xz = mamba.in_proj(torch.randn(1, 12, 8)).transpose(1, 2)
    forward = mamba._scan("", xz)
    backward = mamba._scan("_b", xz.flip(-1)).flip(-1)
    temporal = mamba._scan("_s", xz.unflatten(-1, (3, 4)).transpose(-1, -2).flatten(-2))
    temporal = temporal.unflatten(-1, (4, 3)).transpose(-1, -2).flatten(-2)
    assert not torch.allclose(forward, backward, atol=1e-3)
    assert not torch.allclose(forward, temporal, atol=1e-3)
    assert not torch.allclose(backward, temporal, atol=1e-3)


def test_vol_sizes_must_match_the_sequence():
    with pytest.raises(ValueError, match="vol_sizes"):
        SpatioTemporalMamba(8, d_state=4)(torch.randn(1, 10, 8), (3, 2, 2))


def test_grn_by_hand():
    grn = GRN(2)
    with torch.no_grad():
        grn.gamma.fill_(1.0)
    x = torch.tensor([[[3.0, 0.0], [4.0, 0.0]]])  # channel norms 5 and 0, mean 2.5 -> ratio 2, 0
    torch.testing.assert_close(grn(x), torch.tensor([[[9.0, 0.0], [12.0, 0.0]]]))
    quirk = GRN(2, norm="tokens_and_channels")
    with torch.no_grad():
        quirk.gamma.fill_(1.0)
    torch.testing.assert_close(quirk(x), 2 * x)  # ratio ~1: the released code's behaviour


# ---------------------------------------------------------------- sensory memory


def test_sensory_memory_is_bounded_and_newest_first():
    memory = SensoryMemory(num_previous=2)
    for i in range(5):
        memory.push(i, torch.full((1, C, 2, 2), float(i), requires_grad=True))
        assert len(memory) == min(i + 1, 2)
    assert memory.frame_indices() == [4, 3]
    assert [f[0, 0, 0, 0].item() for f in memory.history()] == [4.0, 3.0]
    assert not any(f.requires_grad for f in memory.history())
    with pytest.raises(ValueError, match="frames must increase"):
        memory.push(4, torch.zeros(1, C, 2, 2))
    memory.reset()
    assert memory.history() == []


def test_sensory_memory_feeds_the_fusion(fusion):
    memory = SensoryMemory(num_previous=2)
    frames = [_frame(20 + i) for i in range(4)]
    for i, frame in enumerate(frames):
        out = fusion(_text(), frame, memory.history())
        memory.push(i, frame)
    direct = fusion(_text(), frames[3], [frames[2], frames[1]])
    torch.testing.assert_close(out.image_features, direct.image_features)
