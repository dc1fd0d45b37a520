"""Credible initial frame selection: the state machine on scripted scores (expected switch frames
worked out by hand from methods.md §3.3), then the stage switch inside the tracker with the
decoder's scores scripted through its head biases (micro ReSurgSAM2, tiny CLIP)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
from _referring_fixtures import script_scores, tiny_model, write_tiny_clip

from surgray.tracking.cifs import CIFSConfig, CredibleFrameSelector, sigmoid
from surgray.tracking.tracker import Tracker

CREDIBLE = 3.0  # sigmoid 0.953 > 0.9
DOUBTFUL = 1.0  # sigmoid 0.731 <= 0.9
ABSENT = -3.0  # sigmoid 0.047 < 0.5


def feed(selector: CredibleFrameSelector, steps, start: int = 0):
    """Run (score, iou) steps; returns (frame of the switch, chosen frame) or (None, None)."""
    for offset, (score, iou) in enumerate(steps):
        frame = start + offset
        chosen = selector.observe_search(frame, score, iou, payload=f"out{frame}")
        if chosen is not None:
            assert chosen.payload == f"out{chosen.frame_idx}"
            return frame, chosen.frame_idx
    return None, None


def test_five_credible_frames_pick_the_highest_iou():
    selector = CredibleFrameSelector()
    ious = [0.80, 0.95, 0.75, 0.90, 0.85]
    for frame, iou in enumerate(ious[:4]):
        assert selector.observe_search(frame, CREDIBLE, iou) is None
        assert selector.phase == "searching"
    chosen = selector.observe_search(4, CREDIBLE, ious[4])
    assert (chosen.frame_idx, chosen.iou) == (1, 0.95)
    assert selector.phase == "tracking" and selector.window_frames == []


def test_window_rules_step_by_step():
    selector = CredibleFrameSelector()
    script = [
        # frame: (score, iou) -> window after it, newest first
        (CREDIBLE, 0.80, [0]),
        (CREDIBLE, 0.90, [1, 0]),
        (DOUBTFUL, 0.95, [1]),  # score not credible: the oldest candidate goes
        (CREDIBLE, 0.75, [3, 1]),
        (CREDIBLE, 0.85, [4, 3, 1]),
        (CREDIBLE, 0.60, [4, 3, 1]),  # present but IoU too low: nothing changes
        (CREDIBLE, 0.80, [6, 4, 3, 1]),
        (CREDIBLE, 0.95, [7, 6, 4, 3, 1]),  # full, 6 -> 4 is a gap
        (CREDIBLE, 0.72, [8, 7, 6, 4, 3]),
        (CREDIBLE, 0.71, [9, 8, 7, 6, 4]),
    ]
    for frame, (score, iou, window) in enumerate(script):
        assert selector.observe_search(frame, score, iou) is None
        assert selector.window_frames == window, frame
    chosen = selector.observe_search(10, CREDIBLE, 0.73)  # 10, 9, 8, 7, 6: consecutive
    assert chosen.frame_idx == 7


def test_doubtful_score_on_an_empty_window_and_thresholds_are_strict():
    selector = CredibleFrameSelector(CIFSConfig(window=2))
    assert selector.observe_search(0, DOUBTFUL, 0.99) is None
    assert selector.window_frames == []
    assert selector.observe_search(1, CREDIBLE, 0.7) is None  # iou must exceed 0.7
    assert selector.window_frames == []
    # A logit whose sigmoid lands exactly on the threshold is not credible either.
    exact = float(np.log(0.75 / 0.25))
    assert sigmoid(exact) == pytest.approx(0.75)
    strict = CredibleFrameSelector(CIFSConfig(window=1, score_threshold=sigmoid(exact)))
    assert strict.observe_search(0, exact, 0.9) is None
    assert strict.observe_search(1, exact + 1e-3, 0.9).frame_idx == 1


def test_ties_go_to_the_newest_and_window_size_is_configurable():
    selector = CredibleFrameSelector(CIFSConfig(window=3))
    assert feed(selector, [(CREDIBLE, 0.9), (CREDIBLE, 0.8), (CREDIBLE, 0.9)]) == (2, 2)


def test_cifs_off_takes_the_first_frame_meeting_both_thresholds():
    selector = CredibleFrameSelector(CIFSConfig(enabled=False))
    steps = [(DOUBTFUL, 0.99), (CREDIBLE, 0.60), (CREDIBLE, 0.75), (CREDIBLE, 0.99)]
    assert feed(selector, steps) == (2, 2)


def test_reverse_passes_count_consecutive_frames_downwards():
    selector = CredibleFrameSelector(CIFSConfig(window=3))
    steps = [(CREDIBLE, 0.8), (CREDIBLE, 0.9), (CREDIBLE, 0.85)]
    for offset, (score, iou) in enumerate(steps):
        chosen = selector.observe_search(9 - offset, score, iou)
    assert chosen.frame_idx == 8


def test_lost_then_searching_then_tracking_again():
    selector = CredibleFrameSelector(CIFSConfig(window=2, lost_patience=3))
    assert feed(selector, [(CREDIBLE, 0.8), (CREDIBLE, 0.9)]) == (1, 1)
    scores = [2.0, ABSENT, ABSENT, 0.5, ABSENT, ABSENT, ABSENT]
    phases = [selector.observe_tracking(2 + i, s) for i, s in enumerate(scores)]
    assert phases == ["tracking", "lost", "lost", "tracking", "lost", "lost", "searching"]
    assert selector.window_frames == [] and selector.selected is None
    assert feed(selector, [(CREDIBLE, 0.9), (CREDIBLE, 0.8)], start=9) == (10, 9)
    assert selector.phase == "tracking"


def test_no_patience_never_searches_again():
    selector = CredibleFrameSelector(CIFSConfig(window=1, lost_patience=None))
    feed(selector, [(CREDIBLE, 0.8)])
    assert {selector.observe_tracking(t, ABSENT) for t in range(1, 200)} == {"lost"}
    assert selector.unseen_frames == 199


def test_misuse_and_bad_configs_raise():
    selector = CredibleFrameSelector()
    with pytest.raises(RuntimeError, match="not searching|while searching"):
        selector.observe_tracking(0, 1.0)
    selector.start_tracking()
    with pytest.raises(RuntimeError, match="not searching"):
        selector.observe_search(0, CREDIBLE, 0.9)
    for bad in ({"window": 0}, {"score_threshold": 1.5}, {"lost_patience": 0}, {"windows": 5}):
        with pytest.raises(pydantic.ValidationError):
            CIFSConfig(**bad)


# ---------------------------------------------------------------- the switch inside the tracker

SIZE = 64
# Frame -> (object-score logit, IoU) of every decoder pass on that frame.
SCRIPT = [
    (CREDIBLE, 0.80),  # 0  A: [0]                 B (CIFS off): selected, tracking
    (CREDIBLE, 0.90),  # 1  A: [1, 0]
    (-2.0, 0.95),  # 2      A: [1] (doubtful)      B: lost
    (CREDIBLE, 0.75),  # 3  A: [3, 1]              B: tracking
    (CREDIBLE, 0.85),  # 4  A: [4, 3, 1]
    (CREDIBLE, 0.60),  # 5  A: unchanged (low IoU)
    (CREDIBLE, 0.80),  # 6  A: [6, 4, 3, 1]
    (CREDIBLE, 0.95),  # 7  A: [7, 6, 4, 3, 1] gap
    (CREDIBLE, 0.72),  # 8  A: [8, 7, 6, 4, 3]
    (CREDIBLE, 0.71),  # 9  A: [9, 8, 7, 6, 4]
    (CREDIBLE, 0.73),  # 10 A: consecutive -> frame 7 (IoU 0.95) conditions, tracking
    (CREDIBLE, 0.90),  # 11 A: tracked
    (ABSENT, 0.90),  # 12   A, B: lost
    (2.0, 0.90),  # 13      A, B: seen again
    (ABSENT, 0.90),  # 14   lost
    (ABSENT, 0.90),  # 15   A: lost twice in a row (patience 2): searching again
    (CREDIBLE, 0.80),  # 16 A: [16]
    (CREDIBLE, 0.90),  # 17
    (CREDIBLE, 0.99),  # 18
    (CREDIBLE, 0.80),  # 19
    (CREDIBLE, 0.80),  # 20 A: 20..16 consecutive -> frame 18 conditions
    (CREDIBLE, 0.80),  # 21 A: tracked
]
EXPECTED_A = ["searching"] * 10 + ["tracking", "tracking", "lost", "tracking", "lost"]
EXPECTED_A += ["searching"] * 5 + ["tracking", "tracking"]
EXPECTED_B = ["tracking", "tracking", "lost"] + ["tracking"] * 9 + ["lost", "tracking"]
EXPECTED_B += ["lost", "lost"] + ["tracking"] * 6


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory):
    clip_dir = write_tiny_clip(tmp_path_factory.mktemp("clip"))
    return tiny_model(clip_dir, size=SIZE, semantic_head=None, categories=())


def frame(t: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    return rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)


def test_stage_switch_in_the_tracker_on_scripted_scores(scripted_model):
    tracker = Tracker(scripted_model, {"name": "dlm"})
    state = tracker.start("scripted", (48, 80))
    tracker.add_text(state, 1, "the grasper", cifs={"lost_patience": 2})
    tracker.add_text(state, 2, "the needle driver", cifs={"enabled": False})
    a, b = state.objects[1], state.objects[2]
    states_a, states_b, kinds_a, held_a = [], [], [], {}
    for t, (score, iou) in enumerate(SCRIPT):
        script_scores(scripted_model, score, iou)
        result = tracker.step(state, frame(t))
        assert result.obj_ids == [1, 2]
        assert result.get(1).mask.shape == (48, 80) and result.get(1).mask.dtype == bool
        states_a.append(result.get(1).state)
        states_b.append(result.get(2).state)
        kinds_a.append(a.last.kind)
        held_a[t] = sorted(e.frame_idx for e in a.policy.held_entries())
    assert states_a == EXPECTED_A
    assert states_b == EXPECTED_B
    # Stage-1 masks are the results until the switch; tracking starts on the next frame.
    assert kinds_a == ["referred"] * 11 + ["tracked"] * 5 + ["referred"] * 5 + ["tracked"]
    # The selected frame is the only memory from the search: frames 8-10 never are.
    assert held_a[9] == [] and held_a[10] == [7]
    assert held_a[11] == [7, 11]
    assert held_a[15] == [] and held_a[20] == [18] and held_a[21] == [18, 21]
    cond = [e for e in a.policy.held_entries() if e.frame_idx == 18][0]
    assert cond.is_conditioning and cond.predicted_iou == pytest.approx(0.99, abs=1e-6)
    assert sorted(a.cond_outputs) == [18] and sorted(b.cond_outputs) == [0]


def test_seek_clears_the_sensory_memory_and_windows(scripted_model):
    tracker = Tracker(scripted_model, {"name": "dlm"})
    state = tracker.start("seek", (48, 80), num_frames=10)
    tracker.add_text(state, 5, "the grasper")
    script_scores(scripted_model, CREDIBLE, 0.8)
    for t in range(3):
        tracker.step(state, frame(t))
    selector = state.referring.objects[5].selector
    assert selector.window_frames == [2, 1, 0] and len(state.referring.history) == 2
    tracker.seek(state, 6)
    assert selector.window_frames == [] and len(state.referring.history) == 0
    tracker.step(state, frame(6))
    assert selector.window_frames == [6]
    tracker.remove_object(state, 5)
    assert state.referring.objects == {}
