"""Parameter groups, freezing and the lr schedule, on a small module named like SAM2.

Every expected lr and weight decay below is a literal: with layer decay 1/2 and 4 trunk
blocks, patch/position embeddings (layer 0) get 2^-5 of the vision lr, block i gets
2^-(4 - i), everything outside the trunk 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from surgray.model.sam2.layers import LayerNorm2d
from surgray.train.optim import (
    OptimConfig,
    apply_freeze,
    build_optimizer,
    build_scheduler,
    plan_param_groups,
    trunk_layer_id,
    warmup_cosine_factor,
)


class FakeSAM2(nn.Module):
    """Parameter names as in SAM2 (plus new surgical modules), tiny shapes."""

    def __init__(self) -> None:
        super().__init__()
        trunk = nn.Module()
        trunk.patch_embed = nn.ModuleDict({"proj": nn.Conv2d(3, 4, 3)})
        trunk.pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))
        trunk.pos_embed_window = nn.Parameter(torch.zeros(1, 4, 1, 1))
        trunk.blocks = nn.ModuleList(
            nn.ModuleDict(
                {"norm1": nn.LayerNorm(4), "attn": nn.ModuleDict({"qkv": nn.Linear(4, 12)})}
            )
            for _ in range(4)
        )
        neck = nn.ModuleDict({"convs": nn.ModuleList([nn.Conv2d(4, 8, 1)])})
        self.image_encoder = nn.ModuleDict({"trunk": trunk, "neck": neck})
        self.sam_mask_decoder = nn.ModuleDict(
            {"upscale_norm": LayerNorm2d(8), "iou_head": nn.Linear(8, 3)}
        )
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(7, 1, 1, 8))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, 8))
        self.cross_modal_fusion = nn.ModuleDict({"x": nn.Linear(8, 8), "norm": nn.LayerNorm(8)})
        self.text_projection = nn.Linear(8, 8)
        self.text_encoder = nn.Linear(8, 8)


CFG = OptimConfig(base_lr=1e-4, vision_lr=2e-4, new_module_lr=3e-4, layer_decay=0.5)

T = "image_encoder.trunk."
EXPECTED = {  # name: (lr, weight decay)
    T + "patch_embed.proj.weight": (6.25e-6, 0.1),
    T + "patch_embed.proj.bias": (6.25e-6, 0.0),
    T + "pos_embed": (6.25e-6, 0.0),
    T + "pos_embed_window": (6.25e-6, 0.0),
    **{
        f"{T}blocks.{i}.{part}": (lr, wd)
        for i, lr in enumerate([1.25e-5, 2.5e-5, 5e-5, 1e-4])
        for part, wd in [
            ("norm1.weight", 0.0),
            ("norm1.bias", 0.0),
            ("attn.qkv.weight", 0.1),
            ("attn.qkv.bias", 0.0),
        ]
    },
    "image_encoder.neck.convs.0.weight": (2e-4, 0.1),
    "image_encoder.neck.convs.0.bias": (2e-4, 0.0),
    "sam_mask_decoder.upscale_norm.weight": (1e-4, 0.0),  # LayerNorm2d is a norm
    "sam_mask_decoder.upscale_norm.bias": (1e-4, 0.0),
    "sam_mask_decoder.iou_head.weight": (1e-4, 0.1),
    "sam_mask_decoder.iou_head.bias": (1e-4, 0.0),
    "maskmem_tpos_enc": (1e-4, 0.0),  # a position encoding
    "no_mem_embed": (1e-4, 0.1),
    "cross_modal_fusion.x.weight": (3e-4, 0.1),
    "cross_modal_fusion.x.bias": (3e-4, 0.0),
    "cross_modal_fusion.norm.weight": (3e-4, 0.0),
    "cross_modal_fusion.norm.bias": (3e-4, 0.0),
    "text_projection.weight": (3e-4, 0.1),
    "text_projection.bias": (3e-4, 0.0),
    "text_encoder.weight": (1e-4, 0.1),
    "text_encoder.bias": (1e-4, 0.0),
}


def lr_wd_by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert names[id(p)] not in table, "a parameter sits in two groups"
            table[names[id(p)]] = (group["lr"], group["weight_decay"])
    return table


def test_every_parameter_gets_its_lr_and_weight_decay():
    model = FakeSAM2()
    table = lr_wd_by_name(build_optimizer(model, CFG), model)
    assert set(table) == set(EXPECTED)
    for name, (lr, wd) in EXPECTED.items():
        assert table[name][0] == pytest.approx(lr, rel=1e-12), name
        assert table[name][1] == wd, name


def test_group_names_and_end_factors():
    specs = {s.name: s for s in plan_param_groups(FakeSAM2(), CFG)}
    assert specs["vision/layer0/decay"].param_names == [T + "patch_embed.proj.weight"]
    assert specs["vision/layer0/no_decay"].param_names == [
        T + "pos_embed",
        T + "pos_embed_window",
        T + "patch_embed.proj.bias",
    ]
    assert specs["vision/layer4/decay"].lr_scale == 0.5
    assert specs["vision/decay"].param_names == ["image_encoder.neck.convs.0.weight"]
    assert specs["new/decay"].end_factor == pytest.approx(1 / 30)
    assert specs["base/decay"].end_factor == 0.1
    assert len(specs) == 16  # (5 trunk layers, neck, base, new) x (decay, no_decay)


def test_layer_ids_follow_hiera():
    assert trunk_layer_id("pos_embed", 12) == 0
    assert trunk_layer_id("patch_embed.proj.weight", 12) == 0
    assert trunk_layer_id("blocks.0.mlp.layers.0.weight", 12) == 1
    assert trunk_layer_id("blocks.11.attn.qkv.bias", 12) == 12
    assert trunk_layer_id("rel_pos_h", 12) == 13
    assert trunk_layer_id("some_other_param", 12) == 13


def test_layer_scale_override_like_sam2_1_configs():
    cfg = CFG.model_copy(update={"layer_scale_overrides": {"*pos_embed*": 1.0}})
    model = FakeSAM2()
    table = lr_wd_by_name(build_optimizer(model, cfg), model)
    assert table[T + "pos_embed"] == (2e-4, 0.0)
    assert table[T + "pos_embed_window"] == (2e-4, 0.0)
    assert table[T + "patch_embed.proj.weight"][0] == pytest.approx(6.25e-6)


def test_weight_decay_rules_can_be_narrowed_to_sam2s():
    cfg = CFG.model_copy(update={"no_decay_patterns": ("*bias*",), "no_decay_norms": False})
    model = FakeSAM2()
    table = lr_wd_by_name(build_optimizer(model, cfg), model)
    assert table[T + "pos_embed"][1] == 0.1
    assert table[T + "blocks.0.norm1.weight"][1] == 0.1
    assert table[T + "blocks.0.norm1.bias"][1] == 0.0


def test_frozen_image_encoder_is_left_out():
    cfg = CFG.model_copy(update={"frozen_prefixes": ("image_encoder.", "text_encoder.")})
    model = FakeSAM2()
    frozen = apply_freeze(model, cfg)
    assert len(frozen) == 4 + 4 * 4 + 2 + 2  # trunk stem, blocks, neck, text encoder
    table = lr_wd_by_name(build_optimizer(model, cfg), model)
    assert not any(n.startswith(("image_encoder.", "text_encoder.")) for n in table)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert model.text_projection.weight.requires_grad


def test_fusion_only_phase_then_everything_trains():
    cfg = CFG.model_copy(
        update={
            "frozen_prefixes": ("text_encoder.",),
            "trainable_prefixes": ("cross_modal_fusion.", "text_projection."),
            "unfreeze_at_step": 5,
        }
    )
    model = FakeSAM2()
    apply_freeze(model, cfg, step=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "cross_modal_fusion.x.weight",
        "cross_modal_fusion.x.bias",
        "cross_modal_fusion.norm.weight",
        "cross_modal_fusion.norm.bias",
        "text_projection.weight",
        "text_projection.bias",
    }
    optimizer = build_optimizer(model, cfg)
    table = lr_wd_by_name(optimizer, model)
    assert set(table) == set(EXPECTED) - {"text_encoder.weight", "text_encoder.bias"}

    # one real step: only the trainable parameters move
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(2, 8)
    loss = model.text_projection(x).sum() + model.no_mem_embed.sum()
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.text_projection.weight, before["text_projection.weight"])
    assert torch.equal(model.no_mem_embed, before["no_mem_embed"])  # frozen: no grad

    apply_freeze(model, cfg, step=4)
    assert not model.no_mem_embed.requires_grad
    apply_freeze(model, cfg, step=5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(EXPECTED) - {"text_encoder.weight", "text_encoder.bias"}


def test_schedule_factor_literals():
    f = warmup_cosine_factor
    assert f(0.0, 0.2, 0.01, 0.1) == pytest.approx(0.01)
    assert f(0.1, 0.2, 0.01, 0.1) == pytest.approx(0.505)
    assert f(0.2, 0.2, 0.01, 0.1) == pytest.approx(1.0)
    assert f(0.6, 0.2, 0.01, 0.1) == pytest.approx(0.55)
    assert f(1.0, 0.2, 0.01, 0.1) == pytest.approx(0.1)
    assert f(1.5, 0.2, 0.01, 0.1) == pytest.approx(0.1)
    assert f(0.0, 0.0, 0.01, 0.1) == pytest.approx(1.0)  # SAM2: no warm-up
    assert f(0.25, 0.0, 0.01, 0.0) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))


def test_scheduler_per_group_at_chosen_steps():
    cfg = CFG.model_copy(update={"warmup_fraction": 0.2})
    model = FakeSAM2()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=20)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    expected = {  # step: (base/decay, new/decay, vision/layer1/decay)
        0: (1e-6, 3e-6, 1.25e-7),
        2: (5.05e-5, 1.515e-4, 6.3125e-6),
        4: (1e-4, 3e-4, 1.25e-5),
        12: (5.5e-5, 1.55e-4, 6.875e-6),
        20: (1e-5, 1e-5, 1.25e-6),
        23: (1e-5, 1e-5, 1.25e-6),
    }
    for step in range(24):
        if step in expected:
            got = tuple(
                by_name[k]["lr"] for k in ("base/decay", "new/decay", "vision/layer1/decay")
            )
            assert got == pytest.approx(expected[step], rel=1e-9), step
            assert by_name["base/no_decay"]["weight_decay"] == 0.0
        optimizer.step()
        scheduler.step()


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        OptimConfig(warmup_fraction=1.0)
    with pytest.raises(ValueError):
        OptimConfig(layer_decay=0.0)
    with pytest.raises(ValueError):
        OptimConfig(base_lr=1e-4, lr=1e-3)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(build_optimizer(FakeSAM2(), CFG), CFG, total_steps=0)
    with pytest.raises(ValueError, match="no parameter"):
        build_optimizer(FakeSAM2(), CFG.model_copy(update={"frozen_prefixes": ("",)}))
