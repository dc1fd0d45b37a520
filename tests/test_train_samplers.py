"""Clip samplers: the frames and objects chosen, checked as properties over many seeds."""

from __future__ import annotations

import numpy as np
import pytest

from surgray.train.config import SamplingSection
from surgray.train.samplers import (
    ClipSampler,
    choose_objects,
    sample_hybrid_frames,
    sample_referring_frames,
    sample_sam2_frames,
)

SEEDS = range(300)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_sam2_clip_is_eight_evenly_strided_frames_inside_the_video():
    strides = set()
    for seed in SEEDS:
        frames = sample_sam2_frames(40, 8, 3, rng(seed))
        assert len(frames) == 8
        steps = {b - a for a, b in zip(frames, frames[1:])}
        assert len(steps) == 1  # one stride for the whole clip
        stride = steps.pop()
        assert 1 <= stride <= 3
        strides.add(stride)
        assert 0 <= frames[0] and frames[-1] <= 39
    assert strides == {1, 2, 3}


def test_sam2_clip_stride_is_limited_to_what_fits_and_short_videos_give_all_frames():
    for seed in SEEDS:
        frames = sample_sam2_frames(10, 8, 4, rng(seed))  # only stride 1 fits (8 frames in 10)
        assert frames == tuple(range(frames[0], frames[0] + 8))
        assert frames[0] in (0, 1, 2)
    assert sample_sam2_frames(5, 8, 3, rng(0)) == (0, 1, 2, 3, 4)
    assert sample_sam2_frames(1, 8, 3, rng(0)) == (0,)
    with pytest.raises(ValueError, match="at least one annotated frame"):
        sample_sam2_frames(0, 8, 1, rng(0))


def test_sam2_clip_starts_cover_the_whole_video():
    starts = {sample_sam2_frames(20, 8, 1, rng(seed))[0] for seed in SEEDS}
    assert starts == set(range(13))  # 0 .. 20 - 8


def test_hybrid_clip_three_drawn_frames_then_five_consecutive():
    for seed in SEEDS:
        frames, long_term = sample_hybrid_frames(50, 3, 5, rng(seed))
        assert len(frames) == 8
        assert long_term == (1, 2)
        drawn, run = frames[:3], frames[3:]
        assert list(drawn) == sorted(set(drawn))  # distinct, in time order
        assert run == tuple(range(run[0], run[0] + 5))
        assert drawn[-1] < run[0] and drawn[0] >= 0 and run[-1] <= 49


def test_hybrid_clip_draws_reach_the_start_of_long_videos_and_need_enough_frames():
    firsts = [sample_hybrid_frames(50, 3, 5, rng(seed))[0][0] for seed in SEEDS]
    assert min(firsts) == 0
    frames, _ = sample_hybrid_frames(8, 3, 5, rng(1))  # exactly enough frames
    assert frames == (0, 1, 2, 3, 4, 5, 6, 7)
    with pytest.raises(ValueError, match="needs 8 frames, the video has 7"):
        sample_hybrid_frames(7, 3, 5, rng(0))


def test_referring_clip_context_anchor_and_tracking_frames():
    reversed_count = 0
    for seed in SEEDS:
        picked = sample_referring_frames(60, 2, 4, 7, 0.25, rng(seed))
        frames = picked.frames
        assert len(frames) == 2 + 1 + 7
        assert picked.context == (0, 1) and picked.anchor == 2
        direction = -1 if picked.reversed else 1
        reversed_count += picked.reversed
        anchor = frames[picked.anchor]
        # Context: 2 distinct frames among the 4 played just before the anchor, in playing order.
        offsets = [(anchor - f) * direction for f in frames[:2]]
        assert all(1 <= o <= 4 for o in offsets) and offsets[0] > offsets[1]
        # Tracking: the 7 frames played right after the anchor.
        assert frames[3:] == tuple(anchor + direction * k for k in range(1, 8))
        assert all(0 <= f < 60 for f in frames)
    # Time reversal with p = 0.25: 300 seeded draws land near 75.
    assert 50 <= reversed_count <= 100


def test_referring_only_clip_and_short_videos():
    picked = sample_referring_frames(60, 2, 4, 0, 0.0, rng(3))
    assert len(picked.frames) == 3 and picked.anchor == 2 and not picked.reversed
    short = sample_referring_frames(8, 2, 4, 7, 0.0, rng(3))  # room for 3 tracking frames
    assert len(short.frames) == 2 + 1 + 3
    with pytest.raises(ValueError, match="at least 5 frames"):
        sample_referring_frames(4, 2, 4, 7, 0.0, rng(0))


def test_choose_objects_takes_at_most_max_distinct_visible_ids():
    seen = set()
    for seed in SEEDS:
        picked = choose_objects([5, 1, 9, 3, 5], 3, rng(seed))
        assert len(picked) == 3 and list(picked) == sorted(set(picked))
        assert set(picked) <= {1, 3, 5, 9}
        seen.add(picked)
    assert len(seen) == 4  # every 3-subset of 4 ids occurs
    assert choose_objects([2, 7], 3, rng(0)) == (2, 7)
    assert choose_objects([], 3, rng(0)) == ()


def test_sampler_mixes_kinds_in_the_configured_proportions():
    sampler = ClipSampler(
        [30, 30, 30], SamplingSection(hybrid_fraction=0.5, hflip_prob=0.5), image_fraction=0.2
    )
    generator = rng(7)
    specs = [sampler.sample(generator) for _ in range(2000)]
    kinds = {k: sum(s.kind == k for s in specs) for k in ("image", "hybrid", "sam2")}
    assert 330 <= kinds["image"] <= 470  # 20 %
    assert 730 <= kinds["hybrid"] <= 870  # 50 % of the other 80 %
    assert 730 <= kinds["sam2"] <= 870
    assert {s.video for s in specs} == {0, 1, 2}
    images = [s for s in specs if s.kind == "image"]
    assert all(s.num_frames == 1 and 0 <= s.frames[0] < 30 for s in images)
    assert all(s.long_term == (1, 2) for s in specs if s.kind == "hybrid")
    flips = sum(s.flip for s in specs)
    assert 900 <= flips <= 1100


def test_sampler_is_seeded_and_falls_back_to_sam2_on_short_videos():
    config = SamplingSection(hybrid_fraction=1.0)
    a = [ClipSampler([6], config).sample(rng(s)) for s in range(20)]
    b = [ClipSampler([6], config).sample(rng(s)) for s in range(20)]
    assert a == b
    assert all(s.kind == "sam2" and s.frames == tuple(range(6)) for s in a)  # too short for 3 + 5
    long = [ClipSampler([40], config).sample(rng(s)) for s in range(20)]
    assert all(s.kind == "hybrid" for s in long)
    assert len({s.frames for s in long}) > 10


def test_sampler_referring_clips_and_bad_inputs():
    config = SamplingSection(
        referring_fraction=1.0, hybrid_fraction=0.0, referring_tracking_prob=0.5
    )
    sampler = ClipSampler([3, 40], config)  # the 3-frame video is too short to refer
    specs = [sampler.sample(rng(s)) for s in range(200)]
    assert all(s.kind == "referring" and s.video == 1 and not s.flip for s in specs)
    assert all(s.object_frame == s.anchor == 2 for s in specs)
    assert {s.num_frames for s in specs} == {3, 10}  # referring-only and tracking clips
    with pytest.raises(ValueError, match="at least 5 annotated frames"):
        ClipSampler([3, 4], config)
    with pytest.raises(ValueError, match="no annotated frame"):
        ClipSampler([5, 0], SamplingSection())
    with pytest.raises(ValueError, match="at least one video"):
        ClipSampler([], SamplingSection())


def test_reverse_prob_plays_sam2_clips_backwards():
    sampler = ClipSampler([30], SamplingSection(hybrid_fraction=0.0, reverse_prob=1.0))
    spec = sampler.sample(rng(0))
    assert spec.reversed and list(spec.frames) == sorted(spec.frames, reverse=True)
