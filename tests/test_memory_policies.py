"""Memory-bank policies: hand-worked selections, bounded storage, and SAM2's reference choice.

Every expected value is a literal worked out by hand from the rules (the comment next to it
shows how) or computed by Meta's reference `SAM2Base` (last section).
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from surgray.model.sam2.memory_types import MemoryEntry
from surgray.tracking.memory.base import build_policy, policy_names
from surgray.tracking.memory.config import (
    DiveMemPolicyConfig,
    DLMPolicyConfig,
    PrunePolicyConfig,
    RecentPolicyConfig,
    parse_policy_config,
    resurgsam2_dlm_preset,
)
from surgray.tracking.memory.divemem import DiveMemPolicy
from surgray.tracking.memory.dlm import DLMPolicy
from surgray.tracking.memory.prune import PrunePolicy
from surgray.tracking.memory.recent import RecentPolicy
from surgray.tracking.memory.similarity import similarity

C, H, W, PTR = 4, 2, 2, 8


def planar(deg: float, channels: int = C) -> torch.Tensor:
    """Every token holds the unit vector at `deg` degrees in the plane of channels 0 and 1, so the
    channel cosine between two such maps is cos(difference of angles)."""
    v = torch.zeros(channels)
    v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return v[:, None, None].expand(channels, H, W).clone()


def entry(
    frame: int,
    cond: bool = False,
    iou: float = 0.5,
    score: float = 1.0,
    feat: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
) -> MemoryEntry:
    return MemoryEntry(
        frame_idx=frame,
        features=feat if feat is not None else torch.full((C, H, W), float(frame)),
        obj_ptr=torch.full((PTR,), float(frame)),
        is_conditioning=cond,
        predicted_iou=iou,
        object_score=score,
        image_features=image,
    )


def spatial(sel) -> list[tuple]:
    return [
        (m.entry.frame_idx, m.temporal_index)
        if m.long_term_slot is None
        else (m.entry.frame_idx, m.temporal_index, m.long_term_slot)
        for m in sel.spatial
    ]


def pointers(sel) -> list[tuple[int, int]]:
    return [(p.entry.frame_idx, p.temporal_offset) for p in sel.pointers]


def track(policy, frames, reverse: bool = False, **kw) -> None:
    """Select then add each frame in order, as a tracker does."""
    for f in frames:
        policy.select(f, reverse=reverse)
        policy.add(entry(f, **kw))


# ============================================================== recent (SAM2)


def test_recent_forward_stride_1():
    p = RecentPolicy()
    p.add(entry(0, cond=True))
    track(p, range(1, 11))
    sel = p.select(11)
    # cond 0 on the last row (6); t-1 = 10 on row 0; slots t_rel 2..6 are ((11-2)//1)*1 - (t_rel-2)
    # = 9, 8, 7, 6, 5 on rows t_rel-1 = 1..5; listed oldest first.
    assert spatial(sel) == [(0, 6), (5, 5), (6, 4), (7, 3), (8, 2), (9, 1), (10, 0)]
    # cond pointer offset 11-0; then 1..15 steps back: 10..1 exist, 0 is the selected cond frame
    # (not looked up again), -1 stops the loop.
    assert pointers(sel) == [(0, 11)] + [(11 - d, d) for d in range(1, 11)]


def test_recent_reverse_stride_1_with_known_length():
    p = RecentPolicy(num_frames=30)
    p.add(entry(20, cond=True))
    track(p, range(19, 9, -1), reverse=True)
    sel = p.select(9, reverse=True)
    # t+1 = 10 on row 0; slots t_rel 2..6: ceil((9+2)/1)*1 + (t_rel-2) = 11..15 on rows 1..5.
    assert spatial(sel) == [(20, 6), (15, 5), (14, 4), (13, 3), (12, 2), (11, 1), (10, 0)]
    # cond 20 is "past" in reverse (20 >= 9): offset (9-20)*(-1) = 11; then 10..19 at 1..10;
    # 20 is the selected cond; 21..24 missing (below num_frames, so no stop).
    assert pointers(sel) == [(20, 11)] + [(9 + d, d) for d in range(1, 11)]


def test_recent_stride_2_forward_and_storage():
    p = RecentPolicy(RecentPolicyConfig(temporal_stride=2))
    p.add(entry(0, cond=True))
    track(p, range(1, 13))
    sel = p.select(13)
    # t-1 = 12 (row 0); ((13-2)//2)*2 = 10, then 10 - 2*(t_rel-2): t_rel 2..6 -> 10, 8, 6, 4, 2.
    assert spatial(sel) == [(0, 6), (2, 5), (4, 4), (6, 3), (8, 2), (10, 1), (12, 0)]
    # pointers ignore the stride: 12..1, then 0 is the selected cond frame.
    assert pointers(sel) == [(0, 13)] + [(13 - d, d) for d in range(1, 13)]
    # frontier 12: features for t >= 11, and even t >= ((12-2)//2)*2 - 4*2 = 2; odd older frames
    # serve only as pointers (t >= 12 - 15).
    assert p.feature_frames == [2, 4, 6, 8, 10, 11, 12]
    assert p.pointer_only_frames == [1, 3, 5, 7, 9]


def test_recent_stride_2_reverse_skips_the_conditioning_frame_slot():
    p = RecentPolicy(RecentPolicyConfig(temporal_stride=2), num_frames=40)
    p.add(entry(30, cond=True))
    track(p, range(29, 19, -1), reverse=True)
    sel = p.select(19, reverse=True)
    # t+1 = 20; ceil((19+2)/2)*2 = 22, then +2*(t_rel-2): 22, 24, 26, 28, 30. Frame 30 is a
    # (selected) cond frame, not a tracked one: that slot stays empty.
    assert spatial(sel) == [(30, 6), (28, 4), (26, 3), (24, 2), (22, 1), (20, 0)]


def test_recent_many_conditioning_frames_limited_to_two():
    p = RecentPolicy(RecentPolicyConfig(max_cond_frames_in_attn=2))
    for f in (0, 6, 8, 20):
        p.add(entry(f, cond=True))
    track(p, range(9, 12))
    sel = p.select(12)
    # closest before 12: 8; closest at/after: 20; unselected {0, 6}. Slots: 11 (row 0), 10, 9,
    # 8 (selected cond: empty), 7 (missing), 6 -> unselected cond used as a plain memory (row 5).
    assert spatial(sel) == [(8, 6), (20, 6), (6, 5), (9, 2), (10, 1), (11, 0)]
    # pointers: 8 (past, offset 4), 20 is ahead (only past); then 11, 10, 9 at 1..3, 8 skipped,
    # 6 (unselected) at 6, 0 (unselected) at 12.
    assert pointers(sel) == [(8, 4), (11, 1), (10, 2), (9, 3), (6, 6), (0, 12)]


def test_recent_three_conditioning_frames_order_and_future_pointers():
    p = RecentPolicy(RecentPolicyConfig(max_cond_frames_in_attn=3, only_past_pointers=False))
    for f in (0, 6, 8, 20):
        p.add(entry(f, cond=True))
    sel = p.select(12)
    # 8 (before), 20 (after), then the nearest of {0, 6}: 6 (distance 6 < 12). With future
    # pointers allowed, 20 gets offset 12-20 = -8. Frame 0 remains an unselected pointer at 12.
    assert spatial(sel)[:3] == [(8, 6), (20, 6), (6, 6)]
    assert pointers(sel) == [(8, 4), (20, -8), (6, 6), (0, 12)]


def test_recent_pointer_window_is_clipped_by_video_length():
    p = RecentPolicy(num_frames=5)
    p.add(entry(4, cond=True))
    track(p, [3], reverse=True)
    # min(5, 16) = 5 -> at most 4 steps; stepping from 2 in reverse: 3 (1), 4 is the cond frame,
    # 5 >= num_frames stops.
    assert pointers(p.select(2, reverse=True)) == [(4, 2), (3, 1)]
    with pytest.raises(ValueError, match="outside the video"):
        p.select(5)


def test_recent_correction_replaces_tracked_entry():
    p = RecentPolicy()
    p.add(entry(0, cond=True))
    track(p, range(1, 4))
    p.add(entry(3, cond=True))  # a click on frame 3
    assert p.conditioning_frames == [0, 3]
    assert p.feature_frames == [1, 2]
    with pytest.raises(ValueError, match="conditioning frame"):
        p.add(entry(3))


def test_recent_bounded_storage_and_clear_after():
    p = RecentPolicy()
    p.add(entry(0, cond=True))
    track(p, range(1, 21))
    # frontier 20: features for t >= 20-6 = 14 (so frame 20 can be re-run), pointers from 20-15 = 5.
    assert p.feature_frames == list(range(14, 21))
    assert p.pointer_only_frames == list(range(5, 14))
    p.clear_after(15)
    assert p.feature_frames == [14, 15]
    sel = p.select(16)
    # what was trimmed is gone: only 14 and 15 remain as spatial memories.
    assert spatial(sel) == [(0, 6), (14, 1), (15, 0)]
    assert pointers(sel) == [(0, 16)] + [(16 - d, d) for d in range(1, 12)]
    p.add(entry(16))
    assert p.feature_frames == [14, 15, 16]


def test_recent_re_tracking_an_earlier_frame_drops_the_old_pass():
    p = RecentPolicy()
    p.add(entry(0, cond=True))
    track(p, range(1, 10))
    # at frontier 9 only t >= 9-6 = 3 kept features; 1, 2 were already pointer-only.
    track(p, [5])  # re-propagation from 5: the old pass's 6..9 go, nothing comes back
    assert p.feature_frames == [3, 4, 5]
    assert p.pointer_only_frames == [1, 2]


def test_recent_bad_entries_raise():
    p = RecentPolicy(num_frames=10)
    with pytest.raises(ValueError, match="features must be"):
        p.add(MemoryEntry(0, torch.zeros(4, 4), torch.zeros(8), True, 1.0, 1.0))
    with pytest.raises(ValueError, match="obj_ptr must be"):
        p.add(MemoryEntry(0, torch.zeros(4, 2, 2), torch.zeros(1, 8), True, 1.0, 1.0))
    with pytest.raises(ValueError, match="outside the video"):
        p.add(entry(10))
    with pytest.raises(ValueError, match="non-negative"):
        p.add(entry(-1))
    p.add(entry(0, cond=True))
    with pytest.raises(ValueError, match="differ from the stored"):
        p.add(entry(1, feat=torch.zeros(4, 3, 3)))
    with pytest.raises(TypeError, match="MemoryEntry"):
        p.add({"frame_idx": 1})


# ============================================================== prune (SurgSAM2)


def test_prune_drops_the_two_most_similar_middle_memories():
    p = PrunePolicy()
    p.add(entry(0, cond=True, feat=planar(0)))  # identical to t-1, but the first entry is protected
    angles = {5: 25.84, 6: 84.26, 7: 18.19, 8: 72.54, 9: 60.0, 10: 0.0}
    for f in range(1, 11):
        p.select(f)
        p.add(entry(f, feat=planar(angles.get(f, 45.0))))
    # cosines to t-1 = frame 10: 5: 0.90, 6: 0.10, 7: 0.95, 8: 0.30, 9: 0.50. SAM2's list has 7
    # entries; the cap 5 removes 2: the most similar middle ones, 7 and 5.
    sel = p.select(11)
    assert spatial(sel) == [(0, 6), (6, 4), (8, 2), (9, 1), (10, 0)]
    assert len(sel.pointers) == 11  # pointers are not pruned


def test_prune_removes_one_when_six_and_respects_a_configured_cap():
    def build(cap):
        p = PrunePolicy(PrunePolicyConfig(max_spatial=cap))
        p.add(entry(5, cond=True, feat=planar(90)))
        for f, deg in zip(range(6, 11), (10, 80, 45, 70, 0)):
            p.select(f)
            p.add(entry(f, feat=planar(deg)))
        return p

    # list for frame 11: cond 5 (slot t_rel 6 = frame 5 is the cond frame: empty), 6, 7, 8, 9, 10
    # -> 6 entries; cap 5 drops 1: most similar to 10 (0 deg) is 6 (10 deg).
    assert spatial(build(5).select(11)) == [(5, 6), (7, 3), (8, 2), (9, 1), (10, 0)]
    # cap 3 drops 3: 6 (10 deg), 8 (45), 9 (70); 7 (80 deg) stays.
    assert spatial(build(3).select(11)) == [(5, 6), (7, 3), (10, 0)]
    # cap 6: nothing to drop.
    assert len(build(6).select(11).spatial) == 6


# ============================================================== DLM (ReSurgSAM2)


def test_dlm_pool_gate_diversity_and_selection():
    p = DLMPolicy()
    p.add(entry(0, cond=True, feat=planar(0)))
    first = {
        1: (0.99, 20),
        2: (0.90, 0),
        3: (0.96, 90),
        4: (0.97, 60),
        5: (0.999, 30),
        6: (0.951, 10),
    }
    for f, (iou, deg) in first.items():
        p.select(f)
        p.add(entry(f, iou=iou, feat=planar(deg)))
        if f == 5:
            assert p.candidate_frames == [1, 3, 4, 5]  # frame 2 is below the 0.95 gate
    # pool [1, 3, 4, 5, 6] full at 6; reference = cond frame 0 (bank empty); angle differences
    # 20, 90, 60, 30, 10 -> least similar is 3.
    assert p.long_term_frames == [3]
    assert p.candidate_frames == []
    for f, deg in zip(range(7, 12), (80, 100, 170, 0, 85)):
        p.select(f)
        p.add(entry(f, iou=0.99, feat=planar(deg)))
    # reference = frame 3 (90 deg); differences 10, 10, 80, 90, 5 -> 10 (0 deg) joins.
    assert p.long_term_frames == [3, 10]
    sel = p.select(12)
    # recent slots 6..11 include 10, so only 3 is added, with the conditioning row (6).
    assert spatial(sel) == [(0, 6), (6, 5), (7, 4), (8, 3), (9, 2), (10, 1), (11, 0), (3, 6)]


def test_dlm_bank_is_fifo():
    p = DLMPolicy(DLMPolicyConfig(bank_size=2, candidate_pool=2))
    p.add(entry(0, cond=True, feat=planar(0)))
    degs = {1: 10, 2: 50, 3: 20, 4: 100, 5: 95, 6: 30}
    for f, deg in degs.items():
        p.select(f)
        p.add(entry(f, iou=0.99, feat=planar(deg)))
    # pools {1,2} vs 0 deg -> 2 (50); {3,4} vs 50 -> 4 (diff 50 > 30); {5,6} vs 100 -> 6 (70).
    # Bank of 2 keeps the newest two.
    assert p.long_term_frames == [4, 6]


def test_width_axis_and_channel_similarity_can_disagree():
    ref = torch.ones(C, H, W)
    # P: each token a positive multiple of the reference (x1 at column 0, x2 at column 1).
    p_map = torch.ones(C, H, W)
    p_map[:, :, 1] = 2.0
    # Q: channel 3 scaled down to 0.01 everywhere: every row still parallel to the reference's.
    q_map = torch.ones(C, H, W)
    q_map[3] = 0.01
    # channel: P tokens parallel -> 1; Q token (1,1,1,.01).(1,1,1,1)/(2 sqrt(3.0001)) = 3.01/3.464159 = 0.868898
    assert similarity(p_map, ref, "channel") == pytest.approx(1.0, abs=1e-6)
    assert similarity(q_map, ref, "channel") == pytest.approx(0.868898, abs=1e-6)
    # width axis: P rows (1,2).(1,1)/(sqrt5 sqrt2) = 0.948683; Q rows all parallel -> 1
    assert similarity(p_map, ref, "width_axis") == pytest.approx(0.948683, abs=1e-6)
    assert similarity(q_map, ref, "width_axis") == pytest.approx(1.0, abs=1e-6)
    # pooled: P pools to (1.5,..) parallel -> 1
    assert similarity(p_map, ref, "pooled") == pytest.approx(1.0, abs=1e-6)

    def pick(kind):
        d = DLMPolicy(DLMPolicyConfig(similarity=kind, candidate_pool=3))
        d.add(entry(0, cond=True, feat=ref))
        for f, feat in zip((1, 2, 3), (ref, p_map, q_map)):
            d.select(f)
            d.add(entry(f, iou=0.99, feat=feat))
        return d.long_term_frames

    assert pick("channel") == [3]  # Q is the least similar per token
    assert pick("width_axis") == [2]  # P is the least similar along rows


# ============================================================== DiveMem (SAM2S)


def _dive_entry(f, iou=0.99, score=1.0, deg=0.0, cond=False):
    return entry(f, cond=cond, iou=iou, score=score, image=planar(deg, channels=6))


def test_divemem_stability_window_diversity_and_slots():
    p = DiveMemPolicy()
    p.add(_dive_entry(0, cond=True, deg=0))
    plan = {f: (0.99, 1.0) for f in range(1, 23)}
    plan[5] = (0.90, 1.0)  # below the gate: the run restarts
    plan[11] = (0.99, -1.0)  # object absent: the run restarts
    for f in (20, 21, 22):
        plan[f] = (0.5, 1.0)
    degs = {10: 30, 16: 120, 17: 60, 18: 10, 19: 90}
    for f, (iou, score) in plan.items():
        p.select(f)
        p.add(_dive_entry(f, iou, score, degs.get(f, 0)))
        if f == 10:
            # runs: 1-4 (4 long), broken at 5; 6-10 reaches 5 at frame 10.
            assert p.candidate_frames == [10]
        if f == 18:
            # broken at 11; 12-16 reaches 5 at 16, then 17, 18 extend it.
            assert p.candidate_frames == [10, 16, 17, 18]
    # pool full at 19; reference = initial cond frame 0 (0 deg): differences 30, 120, 60, 10, 90
    # -> 16 joins the bank (slot 0).
    assert p.long_term_frames == [16]
    sel = p.select(23)
    # recent slots 17..22; 16 is outside them -> attended with the cond row and slot 0.
    assert spatial(sel) == [
        (0, 6),
        (17, 5),
        (18, 4),
        (19, 3),
        (20, 2),
        (21, 1),
        (22, 0),
        (16, 6, 0),
    ]


def test_divemem_gap_restarts_the_run_and_slots_follow_bank_order():
    p = DiveMemPolicy(DiveMemPolicyConfig(stability_window=2, candidate_pool=1, bank_size=2))
    p.add(_dive_entry(0, cond=True))
    for f in (1, 3, 4, 5, 6):  # 2 skipped
        p.select(f)
        p.add(_dive_entry(f))
    # run: 1 -> 1; 3 (gap) -> 1; 4 -> 2 candidate; 5, 6 candidates; pool of 1 -> each joins the
    # bank at once; FIFO of 2 keeps 5, 6.
    assert p.long_term_frames == [5, 6]
    assert p.stable_run == 4
    p.clear_after(4)
    assert p.long_term_frames == []
    assert p.stable_run == 0


def test_divemem_initial_frame_is_permanent_under_a_conditioning_limit():
    p = DiveMemPolicy(DiveMemPolicyConfig(max_cond_frames_in_attn=2))
    for f in (0, 10, 20):
        p.add(_dive_entry(f, cond=True))
    sel = p.select(15)
    # closest cond frames 10 and 20; initial frame 0 added anyway, on the cond row.
    assert spatial(sel) == [(10, 6), (20, 6), (0, 6)]


def test_divemem_requires_image_features():
    p = DiveMemPolicy()
    with pytest.raises(ValueError, match="image_features"):
        p.add(entry(0, cond=True))


# ============================================================== shared behaviour


def _stream_nbytes(policy, frames: int, checkpoints: tuple[int, ...]) -> dict[int, int]:
    gen = torch.Generator().manual_seed(0)
    patterns = [torch.randn(C, H, W, generator=gen) for _ in range(5)]
    images = [torch.randn(6, H, W, generator=gen) for _ in range(5)]

    def make(f, cond=False):
        return MemoryEntry(
            frame_idx=f,
            features=patterns[f % 5].clone(),
            obj_ptr=torch.full((PTR,), float(f)),
            is_conditioning=cond,
            predicted_iou=0.99,
            object_score=1.0,
            image_features=images[f % 5].clone(),
        )

    policy.add(make(0, cond=True))
    seen = {}
    for f in range(1, frames + 1):
        policy.select(f)
        policy.add(make(f))
        if f in checkpoints:
            seen[f] = policy.nbytes()
    return seen


@pytest.mark.parametrize("name", ["recent", "prune", "dlm", "divemem"])
def test_nbytes_does_not_grow_with_video_length(name):
    policy = build_policy({"name": name})
    seen = _stream_nbytes(policy, 500, (50, 500))
    assert seen[50] == seen[500]
    if name == "recent":
        # cond 0 (64 + 32 bytes) + features of 494..500 (7 x 96) + pointers of 485..493 (9 x 32)
        assert seen[500] == 96 + 7 * 96 + 9 * 32


def test_offload_keeps_shared_tensors_shared():
    policy = build_policy({"name": "dlm"})
    _stream_nbytes(policy, 40, ())
    before = policy.nbytes()
    policy.to("meta")
    assert all(e.features.device.type == "meta" for e in policy.held_entries())
    assert policy.nbytes() == before
    policy.reset()
    assert policy.nbytes() == 0


def test_configs_and_registry():
    assert policy_names() == ["divemem", "dlm", "prune", "recent"]
    cfg = parse_policy_config({"name": "dlm", "bank_size": 3})
    assert isinstance(cfg, DLMPolicyConfig) and cfg.candidate_pool == 5 and cfg.iou_gate == 0.95
    assert resurgsam2_dlm_preset().bank_size == 3
    assert PrunePolicyConfig().max_spatial == 5
    d = DiveMemPolicyConfig()
    assert (d.stability_window, d.iou_gate, d.bank_size) == (5, 0.95, 4)
    r = RecentPolicyConfig()
    assert (r.num_maskmem, r.max_obj_ptrs, r.temporal_stride, r.max_cond_frames_in_attn) == (
        7,
        16,
        1,
        -1,
    )
    assert isinstance(build_policy(PrunePolicyConfig(max_spatial=4)), PrunePolicy)
    with pytest.raises(ValidationError, match="max_cond_frames_in_attn"):
        RecentPolicyConfig(max_cond_frames_in_attn=1)
    with pytest.raises(ValidationError):
        parse_policy_config({"name": "fifo"})
    with pytest.raises(ValidationError):
        parse_policy_config({"name": "dlm", "bank_sise": 3})


# ============================================================== against Meta's reference


def _reference_model(num_maskmem: int, stride: int, max_cond: int, max_ptrs: int, only_past: bool):
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention
    from sam2.modeling.sam2_base import SAM2Base
    from torch import nn

    def rope(kv=None, repeat=False):
        return RoPEAttention(
            embedding_dim=32, num_heads=1, kv_in_dim=kv, rope_k_repeat=repeat, feat_sizes=(2, 2)
        )

    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=rope(16, True),
        d_model=32,
        dim_feedforward=32,
        dropout=0.0,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=rope(),
    )
    encoder = MemoryEncoder(
        out_dim=16,
        mask_downsampler=MaskDownSampler(embed_dim=32, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=32), num_layers=1),
        position_encoding=PositionEmbeddingSine(16),
        in_dim=32,
    )

    class ImageEncoderWidth(nn.Module):
        """SAM2Base reads only `image_encoder.neck.d_model`; the selection never runs it."""

        def __init__(self):
            super().__init__()
            self.neck = nn.Module()
            self.neck.d_model = 32

    model = SAM2Base(
        image_encoder=ImageEncoderWidth(),
        memory_attention=MemoryAttention(
            d_model=32, pos_enc_at_input=True, layer=layer, num_layers=1
        ),
        memory_encoder=encoder,
        num_maskmem=num_maskmem,
        image_size=32,
        max_cond_frames_in_attn=max_cond,
        memory_temporal_stride_for_eval=stride,
        use_obj_ptrs_in_encoder=True,
        max_obj_ptrs_in_encoder=max_ptrs,
        add_tpos_enc_to_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
        only_obj_ptrs_in_the_past_for_eval=only_past,
    ).eval()
    with torch.no_grad():  # row i of the temporal table = i, so the rows can be read back
        model.maskmem_tpos_enc.copy_(
            torch.arange(float(num_maskmem)).view(-1, 1, 1, 1).expand_as(model.maskmem_tpos_enc)
        )
    captured = {}
    model.memory_attention.register_forward_hook(
        lambda mod, args, kwargs, out: captured.update(kwargs), with_kwargs=True
    )
    return model, captured


def _reference_choice(model, captured, cond, tracked, frame, num_frames, reverse):
    """Frames (and rows / offsets) the reference attends to, decoded from the memory it builds:
    each frame's features and pointer hold its index; positions hold the temporal row, and
    the pointers' sine encoding (dim 16) gives back their offset."""

    def out(f):
        return {
            "maskmem_features": torch.full((1, 16, 2, 2), float(f)),
            "maskmem_pos_enc": [torch.zeros(1, 16, 2, 2)],
            "obj_ptr": torch.full((1, 32), float(f)),
        }

    output_dict = {
        "cond_frame_outputs": {f: out(f) for f in cond},
        "non_cond_frame_outputs": {f: out(f) for f in tracked},
    }
    feats = [torch.zeros(4, 1, 32)]
    with torch.no_grad():
        model._prepare_memory_conditioned_features(
            frame, False, feats, feats, [(2, 2)], output_dict, num_frames, reverse
        )
    memory, pos, n_ptr = captured["memory"], captured["memory_pos"], captured["num_obj_ptr_tokens"]
    n_spatial = memory.shape[0] - n_ptr
    chosen = [
        (round(memory[i, 0, 0].item()), round(pos[i, 0, 0].item())) for i in range(0, n_spatial, 4)
    ]
    span = min(num_frames, model.max_obj_ptrs_in_encoder) - 1
    ptrs = []
    for i in range(n_spatial, memory.shape[0], 2):
        angle = math.atan2(pos[i, 0, 4].item(), pos[i, 0, 12].item())  # sin/cos of x / 100
        ptrs.append((round(memory[i, 0, 0].item()), round(angle * 100 * span)))
    return chosen, ptrs


REFERENCE_CASES = [
    # (num_maskmem, stride, max_cond, max_ptrs, only_past, cond frames, frames to check, reverse)
    (7, 1, -1, 16, True, (0,), (1, 2, 7, 18, 25), False),
    (7, 2, -1, 16, True, (0,), (3, 9, 14, 25), False),
    (7, 3, -1, 16, True, (2, 9), (5, 12, 20), False),
    (4, 2, -1, 5, True, (0,), (6, 11), False),
    (7, 1, 2, 16, True, (0, 6, 8, 20), (12, 16, 24), False),
    (7, 2, 3, 16, False, (0, 6, 8, 20), (11, 17, 23), False),
    (7, 1, -1, 16, True, (29,), (27, 20, 5), True),
    (7, 2, -1, 16, True, (25,), (22, 17, 4), True),
    (7, 3, 2, 8, False, (2, 12, 28), (18, 9, 0), True),
]


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_recent_matches_the_reference_selection(case):
    num_maskmem, stride, max_cond, max_ptrs, only_past, cond, frames, reverse = case
    num_frames = 30
    model, captured = _reference_model(num_maskmem, stride, max_cond, max_ptrs, only_past)
    cfg = RecentPolicyConfig(
        num_maskmem=num_maskmem,
        temporal_stride=stride,
        max_cond_frames_in_attn=max_cond,
        max_obj_ptrs=max_ptrs,
        only_past_pointers=only_past,
    )
    for frame in frames:
        # a pass that starts next to the nearest prompt behind `frame` and tracks up to it
        step = -1 if reverse else 1
        start = min((c for c in cond if c > frame), default=None) if reverse else None
        if not reverse:
            start = max(c for c in cond if c < frame)
        tracked = [f for f in range(start + step, frame, step) if f not in cond]
        policy = RecentPolicy(cfg, num_frames=num_frames)
        for c in cond:
            policy.add(entry(c, cond=True))
        track(policy, tracked, reverse=reverse)
        sel = policy.select(frame, reverse=reverse)
        expected_spatial, expected_ptrs = _reference_choice(
            model, captured, cond, tracked, frame, num_frames, reverse
        )
        assert spatial(sel) == expected_spatial, f"frame {frame}"
        assert pointers(sel) == expected_ptrs, f"frame {frame}"
