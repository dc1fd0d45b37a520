"""The streaming tracker: bounded state, batching, objects joining and leaving, bad input,
post-processing and the SAM2-style facade (micro model, random weights, 64x64 frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools.sam2_reference import randomize_
from surgray.io.encode import write_video
from surgray.model.checkpoints.variants import micro_config
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.postprocess import HOLE_LOGIT, SPRINKLE_LOGIT, clean_mask_logits
from surgray.tracking.predictor import VideoPredictor
from surgray.tracking.state import TrackerStateError
from surgray.tracking.tracker import Tracker

SIZE = 64


@pytest.fixture(scope="module")
def model() -> SAM2Model:
    torch.set_num_threads(1)
    net = SAM2Model(micro_config(SIZE))
    randomize_(net, 3)  # weights under which objects stay present
    return net.eval()


def scene(t: int, height: int = SIZE, width: int = SIZE, moving: bool = True) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 2] = 90
    img[..., 0] = (40 + 30 * np.sin(xx / 9.0)).astype(np.uint8)
    cx = width / 2 + (width / 5) * np.sin(t / 7) * moving
    cy = height / 2 + (height / 6) * np.cos(t / 5) * moving
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (min(height, width) / 7) ** 2] = (220, 200, 60)
    img[(abs(xx - width * 0.25) < width / 10) & (abs(yy - height * 0.25) < height / 10)] = (
        30,
        200,
        230,
    )
    return img


def areas(result) -> dict[int, int]:
    return {o.obj_id: int(o.mask.sum()) for o in result.objects}


# ------------------------------------------------------------------ bounded state

POLICIES = {
    "recent": {"name": "recent"},
    "prune": {"name": "prune"},
    # Gates at 0 so the long-term banks fill (random weights predict low IoUs).
    "dlm": {"name": "dlm", "iou_gate": 0.0},
    "divemem": {"name": "divemem", "iou_gate": 0.0, "require_object_present": False},
}


def unshared_bytes(state) -> int:
    """Tensor bytes if no two roles of a memory (recent frame, long-term frame, candidate)
    shared their tensors: every entry a policy holds, counted in full."""
    policies = [obj.policy for obj in state.objects.values()]
    outside = state.nbytes() - sum(policy.nbytes() for policy in policies)
    return outside + sum(e.nbytes() for policy in policies for e in policy.held_entries())


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_state_bytes_stop_growing(model, policy):
    # The long-term banks cycle every 5 frames; frames 50 and 200 are in the same phase.
    # Which candidate a bank keeps is data-dependent, and when it is also a recent frame the
    # two share tensors: for dlm/divemem the exact figure moves by that sharing, the
    # unshared total must not move at all.
    tracker = Tracker(model, POLICIES[policy])
    state = tracker.start("long", (SIZE, SIZE))
    tracker.add_points(state, 1, 0, [[32, 32]], [1])
    frame = scene(0, moving=False)
    sizes, bounds = {}, {}
    for t in range(200):
        tracker.step(state, frame)
        if t + 1 in (10, 50, 200):
            sizes[t + 1], bounds[t + 1] = state.nbytes(), unshared_bytes(state)
    assert sizes[10] < sizes[50] and bounds[50] == bounds[200]
    if policy in ("recent", "prune"):
        assert sizes[50] == sizes[200]
    else:
        assert sizes[200] <= bounds[200]
        assert len(state.objects[1].policy.long_term_frames) == 4  # the bank really filled
    assert state.frames_stepped == 200 and state.last_frame_idx == 199


# ------------------------------------------------------------------ batching


def test_step_many_equals_stepping_each_video_alone(model):
    sizes = [(64, 64), (48, 80), (72, 40)]
    batched, single = Tracker(model, keep_logits=True), Tracker(model, keep_logits=True)
    together = [batched.start(f"v{i}", s) for i, s in enumerate(sizes)]
    alone = [single.start(f"v{i}", s) for i, s in enumerate(sizes)]
    for tracker, states in ((batched, together), (single, alone)):
        tracker.add_points(states[0], 1, 0, [[32, 32]], [1])
        tracker.add_box(states[1], 4, 0, (5, 5, 30, 25))
        tracker.add_box(states[2], 2, 2, (3, 3, 20, 30))  # joins at frame 2
    for t in range(6):
        frames = [scene(t, h, w) for h, w in sizes]
        results = batched.step_many(together, frames)
        for state, frame, result in zip(alone, frames, results):
            expected = single.step(state, frame)
            assert result.frame_idx == expected.frame_idx == t
            assert result.obj_ids == expected.obj_ids
            for got, want in zip(result.objects, expected.objects):
                torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
    assert results[2].obj_ids == [2] and results[0].obj_ids == [1]


def test_objects_batched_equal_objects_one_at_a_time(model):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[8:24, 8:24] = True
    prompts = {
        1: lambda tr, st: tr.add_points(st, 1, 0, [[32, 32]], [1]),
        2: lambda tr, st: tr.add_box(st, 2, 0, (6, 6, 26, 26)),
        3: lambda tr, st: tr.add_mask(st, 3, 0, mask),
    }
    tracker = Tracker(model, keep_logits=True)
    joint = tracker.start("joint", (SIZE, SIZE))
    solo = {obj_id: tracker.start(f"solo{obj_id}", (SIZE, SIZE)) for obj_id in prompts}
    for obj_id, add in prompts.items():
        add(tracker, joint)
        add(tracker, solo[obj_id])
    for t in range(5):
        together = tracker.step(joint, scene(t))
        assert together.obj_ids == [1, 2, 3]
        for obj_id, state in solo.items():
            alone = tracker.step(state, scene(t)).get(obj_id)
            torch.testing.assert_close(together.get(obj_id).logits, alone.logits, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ objects and prompts


def test_object_added_mid_video_and_removed(model):
    tracker = Tracker(model, keep_logits=True)
    state = tracker.start("v", (SIZE, SIZE))
    tracker.add_points(state, 1, 0, [[32, 32]], [1], label="disk")
    assert tracker.add_box(state, 2, 4, (6, 6, 26, 26), label="box") is None  # waits for frame 4
    assert state.objects[2].status == "pending"
    seen = [tracker.step(state, scene(t)).obj_ids for t in range(8)]
    assert seen == [[1]] * 4 + [[1, 2]] * 4
    assert state.objects[2].cond_outputs.keys() == {4}  # the box frame is a conditioning frame

    # Object 2 alone from frame 4 on: its track does not depend on object 1.
    alone = tracker.start("alone", (SIZE, SIZE))
    tracker.add_box(alone, 2, 4, (6, 6, 26, 26))
    tracker.seek(alone, 4)
    for t in range(4, 8):
        expected = tracker.step(alone, scene(t)).get(2).logits
    torch.testing.assert_close(tracker.result(state, 7).get(2).logits, expected, atol=1e-4, rtol=0)

    before = state.nbytes()
    tracker.remove_object(state, 1)
    assert state.nbytes() < before
    result = tracker.step(state, scene(8))
    assert result.obj_ids == [2] and result.get(2).label == "box"
    with pytest.raises(KeyError, match="no object 1"):
        tracker.remove_object(state, 1)


def test_correction_on_the_current_frame_reruns_it(model):
    tracker = Tracker(model)
    state = tracker.start("v", (SIZE, SIZE))
    tracker.add_points(state, 1, 0, [[32, 32]], [1])
    for t in range(4):
        tracked = tracker.step(state, scene(t))
    corrected = tracker.add_points(state, 1, 3, [[12, 40]], [1], clear_old_points=False)
    assert corrected.frame_idx == 3 and areas(corrected) != areas(tracked)
    assert state.objects[1].last.kind == "correction"
    assert 3 not in state.objects[1].cond_outputs  # corrections are not conditioning frames
    # A click on a frame never seen for that object is a new initial frame, right away.
    fresh = tracker.add_points(state, 5, 3, [[12, 40]], [1])
    assert fresh.obj_ids == [1, 5] and state.objects[5].last.kind == "init"
    with pytest.raises(ValueError, match="already passed"):
        tracker.add_points(state, 1, 1, [[12, 40]], [1])
    assert tracker.step(state, scene(4)).obj_ids == [1, 5]  # still usable


def test_bad_input_gives_clear_errors_and_keeps_the_state(model):
    tracker = Tracker(model)
    state = tracker.start("case-9", (SIZE, SIZE), num_frames=3)
    tracker.add_points(state, 1, 0, [[32, 32]], [1])
    tracker.step(state, scene(0))
    frame = scene(1)
    bad_frames = [
        (scene(1, 48, 64), ValueError, r"is \(48, 64\).*\(64, 64\)"),
        (np.zeros((0, SIZE, 3), np.uint8), ValueError, "64, 64|empty"),
        (frame.astype(np.float32), ValueError, "uint8"),
        (frame[..., :2], ValueError, "H x W x 3"),
        (np.dstack([frame, frame[..., :1]]), ValueError, "H x W x 3"),
        (frame.tolist(), TypeError, "numpy array"),
        (torch.from_numpy(frame), TypeError, "torch tensor"),
    ]
    for bad, error, message in bad_frames:
        with pytest.raises(error, match=message):
            tracker.step(state, bad)
    with pytest.raises(ValueError, match="outside the frame"):
        tracker.add_points(state, 1, 1, [[70, 10]], [1])
    with pytest.raises(ValueError, match="outside the frame"):
        tracker.add_box(state, 2, 1, (-5, 0, 10, 10))
    with pytest.raises(ValueError, match="x0 <= x1"):
        tracker.add_box(state, 2, 1, (30, 0, 10, 10))
    with pytest.raises(ValueError, match="labels must be 1"):
        tracker.add_points(state, 2, 1, [[10, 10]], [3])
    with pytest.raises(ValueError, match="mask is"):
        tracker.add_mask(state, 2, 1, np.ones((10, 10), bool))
    with pytest.raises(TypeError, match="obj_id must be an int"):
        tracker.add_points(state, "tool", 1, [[10, 10]], [1])
    with pytest.raises(ValueError, match="outside video 'case-9' of 3 frames"):
        tracker.add_points(state, 2, 7, [[10, 10]], [1])
    with pytest.raises(KeyError, match="no object 42"):
        tracker.remove_object(state, 42)
    with pytest.raises(ValueError, match="appears twice"):
        tracker.step_many([state, state], [frame, frame])
    assert state.obj_ids == [1]  # nothing was half-added

    assert tracker.step(state, frame).frame_idx == 1  # still usable, at the right frame
    tracker.step(state, scene(2))
    with pytest.raises(TrackerStateError, match="finished"):
        tracker.step(state, scene(3))
    tracker.seek(state, 2)
    assert tracker.step(state, scene(2)).frame_idx == 2
    tracker.close(state)
    with pytest.raises(TrackerStateError, match="closed"):
        tracker.step(state, scene(3))
    with pytest.raises(TrackerStateError, match="closed"):
        tracker.add_points(state, 1, 0, [[1, 1]], [1])


# ------------------------------------------------------------------ post-processing


def test_hole_filling_and_sprinkle_removal_follow_the_reference_rule():
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[0, 0, 1:6, 1:6] = 3.0  # a 5x5 object ...
    logits[0, 0, 4, 4] = -2.0  # ... with a 1-pixel hole,
    logits[0, 0, 1, 1] = logits[0, 0, 2, 2] = -1.0  # a notch reaching out only diagonally,
    logits[0, 0, 7, 0] = 4.0  # and a 1-pixel speck apart.
    expected = logits.clone()
    expected[0, 0, 4, 4] = HOLE_LOGIT  # 8-connected: (2, 2) belongs to the 40-px background
    assert torch.equal(clean_mask_logits(logits, hole_area=1, sprinkle_area=0), expected)
    assert torch.equal(clean_mask_logits(logits, hole_area=39, sprinkle_area=0), expected)
    everything = clean_mask_logits(logits, hole_area=40, sprinkle_area=0)
    assert torch.equal(everything, torch.where(logits <= 0, HOLE_LOGIT, logits))
    expected[0, 0, 7, 0] = SPRINKLE_LOGIT  # the 22-px object stays
    assert torch.equal(clean_mask_logits(logits, hole_area=1, sprinkle_area=21), expected)
    assert torch.equal(clean_mask_logits(logits, 0, 0), logits)


def test_non_overlap_gives_each_pixel_to_one_object(model):
    results = []
    for non_overlap in (False, True):
        tracker = Tracker(model, keep_logits=True, postprocess={"non_overlap_masks": non_overlap})
        state = tracker.start("v", (SIZE, SIZE))
        tracker.add_box(state, 1, 0, (10, 10, 50, 50))
        tracker.add_box(state, 2, 0, (14, 14, 54, 54))
        results.append(tracker.step(state, scene(0)))
    overlapping, result = results
    assert overlapping.masks().sum(axis=0).max() == 2  # the boxes' masks do overlap
    assert result.masks().sum(axis=0).max() == 1
    assert np.array_equal(result.masks().any(axis=0), overlapping.masks().any(axis=0))
    loser = (result.get(1).logits < result.get(2).logits) & (result.get(1).logits > -10)
    assert not loser.any()


# ------------------------------------------------------------------ facade


def test_facade_streams_from_a_video_file_and_keeps_rle(model, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, (scene(t, 48, 80) for t in range(24)), fps=10, crf=0)
    predictor = VideoPredictor(model)
    state = predictor.init_state(str(path))
    assert (state.num_frames, state.video_height, state.video_width) == (24, 48, 80)
    predictor.add_new_points_or_box(state, 12, 1, points=[[40, 24]], labels=[1])
    forward = [t for t, ids, masks in predictor.propagate_in_video(state)]
    backward = list(predictor.propagate_in_video(state, reverse=True))
    assert forward == list(range(12, 24)) and [t for t, _, _ in backward] == list(range(12, -1, -1))
    assert backward[-1][2].shape == (1, 1, 48, 80)
    assert set(state.masks) == set(range(24))
    per_frame = state.rle_bytes() / 24
    assert per_frame < 400, per_frame  # vs 48*80 = 3840 bytes as a bool mask
    yielded = {t: masks for t, _, masks in backward}
    assert np.array_equal(predictor.masks(state, 3)[1], yielded[3][0, 0].numpy() > 0)

    # A correction resumes the next default pass right after it; earlier frames are kept.
    before = predictor.masks(state, 15)[1]
    predictor.add_new_points_or_box(state, 16, 1, points=[[10, 10]], labels=[0])
    assert [t for t, _, _ in predictor.propagate_in_video(state)] == list(range(17, 24))
    assert np.array_equal(predictor.masks(state, 15)[1], before)
    assert state.video.nbytes() < 64_000  # tensors: bounded tracker state only
    with pytest.raises(RuntimeError, match="cannot remove object 9"):
        predictor.remove_object(state, 9, strict=True)
    assert predictor.remove_object(state, 9) == ([1], [])
    predictor.reset_state(state)
    assert state.obj_ids == [] and not state.masks
    with pytest.raises(RuntimeError, match="No input points or masks"):
        list(predictor.propagate_in_video(state))
