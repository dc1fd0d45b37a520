"""Metric kernels against the official DAVIS 2017 code, plus hand-worked cases.

Golden values: computed once with the official DAVIS 2017 evaluation code,
github.com/davisvideochallenge/davis2017-evaluation @ 30b698a, ``davis2017/metrics.py``
(``db_eval_iou(gt, pred)``, ``db_eval_boundary(gt, pred, bound_th=...)``, ``_seg2bmap``), run
unmodified from a scratch folder outside this repo. scikit-image is not installed here, so its
``skimage.morphology.disk`` (the only dependency the code imports besides numpy and cv2) was stood
in by the same expression as scikit-image's own (``footprints.py`` @ 0070f7d, decomposition=None,
strict_radius=True: ``(X**2 + Y**2) <= radius**2`` on ``np.arange(-radius, radius + 1)``).
Inputs: ``tests/fixtures/metrics/pairs.npz`` (written by ``make_pairs.py`` next to it).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from surgray.eval.evaluate import (
    EvalOptions,
    IdGroup,
    VideoInput,
    build_report,
    evaluate,
    evaluate_video,
)
from surgray.eval.metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    challenge_iou,
    dice_score,
    frame_challenge_iou,
    region_iou,
    score_label_maps,
    score_masks,
)

PAIRS = Path(__file__).parent / "fixtures" / "metrics" / "pairs.npz"

# name: (J = db_eval_iou, F = db_eval_boundary at 0.008, |seg2bmap(pred)|, |seg2bmap(gt)|)
DAVIS_GOLDEN = {
    "empty_empty": (1.0, 1.0, 0, 0),
    "empty_pred": (0.0, 0.0, 0, 64),
    "empty_gt": (0.0, 0.0, 64, 0),
    "identical": (1.0, 1.0, 64, 64),
    "shifted_blob": (0.6344086021505376, 0.2136150234741784, 132, 120),
    "thin_lines": (0.0, 0.5397474443776308, 151, 98),
    "odd_size": (0.3064516129032258, 0.9933774834437086, 70, 76),
    "single_pixels": (0.0, 0.7272727272727273, 7, 4),
    "corner_pixel_only": (0.0, 0.0, 3, 4),
    "full_pred": (0.340625, 0.0, 0, 52),
    "edge_touching": (0.723404255319149, 0.6635160680529301, 36, 44),
    "one_row": (0.4444444444444444, 0.0, 2, 2),
    "one_col": (0.4444444444444444, 0.0, 2, 2),
    "far_apart": (0.0, 0.0, 16, 22),
    "rings_300x400": (0.6829533116178067, 0.5609377552687469, 1364, 1360),
    "noise_20x30": (0.21671018276762402, 0.9815354713313897, 407, 524),
}
# (name, bound_th): db_eval_boundary(gt, pred, bound_th) (fractions of the diagonal, or pixels)
THRESHOLD_GOLDEN = {
    ("shifted_blob", 0.05): 0.7651216305062459,
    ("shifted_blob", 2): 0.4010072395341517,
    ("shifted_blob", 5): 0.8612818261633012,
    ("rings_300x400", 0.05): 0.8839800567854738,
    ("rings_300x400", 2): 0.35388086120174633,
    ("rings_300x400", 5): 0.6336250901814519,
    ("thin_lines", 0.05): 0.8473282442748091,
    ("thin_lines", 2): 0.6709576750536376,
    ("thin_lines", 5): 0.8560606060606061,
}
# _seg2bmap of TINY, and db_eval_iou / db_eval_boundary of the 3-frame rings stack below.
TINY = [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 1]]
TINY_BMAP = [[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]]
STACK_J = [0.6829533116178067, 0.5646029609690444, 1.0]
STACK_F = [0.5609377552687469, 0.2808370635974846, 1.0]


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = np.load(PAIRS)
    return {name: (data[f"{name}.pred"], data[f"{name}.gt"]) for name in DAVIS_GOLDEN}


@pytest.mark.parametrize("name", list(DAVIS_GOLDEN))
def test_j_f_and_boundaries_match_davis(pairs, name):
    pred, gt = pairs[name]
    j, f, n_pred, n_gt = DAVIS_GOLDEN[name]
    scores = score_masks(pred, gt)
    assert float(scores.j) == j
    assert float(scores.f) == f
    assert float(region_iou(pred, gt)) == j
    assert float(boundary_f_measure(pred, gt)) == f
    assert int(boundary_map(pred).sum()) == n_pred
    assert int(boundary_map(gt).sum()) == n_gt


@pytest.mark.parametrize("key", list(THRESHOLD_GOLDEN))
def test_boundary_thresholds_match_davis(pairs, key):
    name, threshold = key
    pred, gt = pairs[name]
    assert float(boundary_f_measure(pred, gt, threshold)) == THRESHOLD_GOLDEN[key]


def test_seg2bmap_map_matches_davis():
    assert boundary_map(np.array(TINY)).astype(int).tolist() == TINY_BMAP


def test_stacked_frames_match_davis(pairs):
    pred, gt = pairs["rings_300x400"]
    preds = np.stack([pred, np.roll(pred, 5, axis=1), np.zeros_like(pred)])
    gts = np.stack([gt, gt, np.zeros_like(gt)])
    scores = score_masks(preds, gts)
    assert scores.j.tolist() == STACK_J
    assert scores.f.tolist() == STACK_F
    # (objects, frames, H, W) works the same way.
    both = score_masks(np.stack([preds, preds]), np.stack([gts, gts]))
    assert both.f.shape == (2, 3) and both.f[1].tolist() == STACK_F


def _dilation_matches(query: np.ndarray, target: np.ndarray, radius: int) -> int:
    """Plain definition: query pixels inside the disk dilation of the target."""
    h, w = target.shape
    grown = np.zeros((h + 2 * radius, w + 2 * radius), bool)
    for dy, dx in itertools.product(range(-radius, radius + 1), repeat=2):
        if dy * dy + dx * dx <= radius * radius:
            grown[radius + dy : radius + dy + h, radius + dx : radius + dx + w] |= target
    return int((query & grown[radius:-radius, radius:-radius]).sum())


@pytest.mark.parametrize("seed,radius", [(0, 3), (1, 7), (2, 1), (3, 12)])
def test_fast_matching_equals_full_frame_dilation(seed, radius):
    rng = np.random.default_rng(seed)
    h, w = 61, 83
    y, x = np.mgrid[0:h, 0:w]
    gt = ((y - 30) / 20) ** 2 + ((x - 40) / 30) ** 2 <= 1
    pred = ((y - 30 - rng.integers(-9, 9)) / 18) ** 2 + ((x - 41) / 33) ** 2 <= 1
    pred ^= rng.random((h, w)) < 0.02
    pb, gb = boundary_map(pred), boundary_map(gt)
    precision = _dilation_matches(pb, gb, radius) / pb.sum()
    recall = _dilation_matches(gb, pb, radius) / gb.sum()
    expected = 2 * precision * recall / (precision + recall)
    assert float(boundary_f_measure(pred, gt, radius)) == pytest.approx(expected, rel=1e-12)


def test_hand_worked_j_and_dice():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0:2, 0:2] = True  # 4 pixels
    gt[1:3, 1:3] = True  # 4 pixels, sharing (1, 1)
    assert float(region_iou(pred, gt)) == 1 / 7
    assert float(dice_score(pred, gt)) == 2 / 8
    empty = np.zeros((4, 4), bool)
    assert float(region_iou(empty, empty)) == 1.0
    assert float(dice_score(empty, empty)) == 1.0
    assert float(region_iou(empty, gt)) == 0.0
    assert float(dice_score(pred, empty)) == 0.0
    scores = score_masks(np.stack([pred, empty]), np.stack([gt, empty]))
    assert scores.dice.tolist() == [0.25, 1.0]
    assert scores.gt_present.tolist() == [True, False]
    assert scores.jf.tolist() == [(1 / 7 + float(scores.f[0])) / 2, 1.0]


def test_hand_worked_challenge_iou():
    j = np.array([[0.5, 1.0, 0.0], [0.25, 1.0, 1.0], [1.0, 1.0, 1.0]])
    present = np.array([[True, True, False], [True, False, False], [False, False, False]])
    per_frame = frame_challenge_iou(j, present)
    assert per_frame[:2].tolist() == [0.75, 0.25] and np.isnan(per_frame[2])
    assert challenge_iou(j, present) == 0.5
    # From label maps: frame 0 objects 1 (IoU 1/2) and 2 (exact); frame 1 object 1 (IoU 1/4)
    # and a predicted-only id 3 that does not count; frame 2 has no GT object and is skipped.
    gt = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros((3, 4, 4), np.uint8)
    gt[0, 0, 0:2], pred[0, 0, 0:1] = 1, 1
    gt[0, 3, :], pred[0, 3, :] = 2, 2
    gt[1, 0:2, 0:2], pred[1, 1, 1] = 1, 1
    pred[1, 3, 3] = 3
    pred[2, 0, 0] = 1
    scores = score_label_maps(pred, gt, [1, 2, 3])
    assert challenge_iou(scores.j, scores.gt_present) == 0.5


def test_radius_and_input_errors():
    assert boundary_radius(1024, 1280) == 14  # ceil(0.008 * 1639.2)
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(10, 10, 3) == 3
    with pytest.raises(ValueError, match="must be whole"):
        boundary_radius(10, 10, 2.5)
    with pytest.raises(ValueError, match=r"\(4, 5\) differs from ground truth \(4, 6\)"):
        score_masks(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="differ from ground truth"):
        score_label_maps(np.zeros((2, 4, 5)), np.zeros((2, 4, 6)), [1])
    with pytest.raises(ValueError, match="in both id groups 'a' and 'b'"):
        EvalOptions(id_groups=(IdGroup("a", (1, 2)), IdGroup("b", (2,))))


# A 4-frame video of 2x4 label maps, worked by hand (radius 1). Object 1 (top row):
# J 1, 1/2, 0, 1; Dice 1, 2/3, 0, 1; F 1, 1, 4/5, 1 (frame 2: P = 2/3, R = 1).
# Object 2 (bottom row) appears in frame 2: J 1, 1/2; F 1, 1; Dice 1, 2/3.
VIDEO_A = {
    "00000": ([[1, 1, 0, 0], [0, 0, 0, 0]], [[1, 1, 0, 0], [0, 0, 0, 0]]),
    "00001": ([[1, 1, 0, 0], [0, 0, 0, 0]], [[1, 0, 0, 0], [0, 0, 0, 0]]),
    "00002": ([[1, 1, 0, 0], [0, 0, 2, 2]], [[0, 0, 1, 1], [0, 0, 2, 2]]),
    "00003": ([[1, 1, 0, 0], [0, 0, 2, 2]], [[1, 1, 0, 0], [0, 0, 0, 2]]),
}
VIDEO_B = {f: ([[0, 1, 1, 0], [0, 0, 0, 0]],) * 2 for f in ("00000", "00001")}


def _video(name: str, frames: dict) -> VideoInput:
    def load(frame: str):
        gt, pred = frames[frame]
        return np.array(gt, np.uint8), np.array(pred, np.uint8)

    return VideoInput(name, tuple(frames), load)


def _objects(result) -> dict[int, tuple]:
    return {o.object_id: (o.frames, o.j, o.f, o.dice) for o in result.objects}


def test_skip_first_and_last_frames():
    kept = evaluate_video(_video("a", VIDEO_A), EvalOptions(skip_first_and_last=False))
    assert kept.frames == 4
    assert _objects(kept)[1] == (4, 0.625, 0.95, pytest.approx((1 + 2 / 3 + 0 + 1) / 4))
    assert _objects(kept)[2] == (2, 0.75, 1.0, pytest.approx((1 + 2 / 3) / 2))
    assert kept.summary.challenge_iou == (1 + 0.5 + 0.5 + 0.75) / 4

    skipped = evaluate_video(_video("a", VIDEO_A), EvalOptions(skip_first_and_last=True))
    assert skipped.frames == 2  # frames 00001 and 00002
    assert _objects(skipped)[1] == (2, 0.25, 0.9, pytest.approx(1 / 3))
    assert _objects(skipped)[2] == (1, 1.0, 1.0, 1.0)
    assert skipped.summary.challenge_iou == 0.5


def test_count_all_frames_scores_empty_pairs_as_one():
    options = EvalOptions(skip_first_and_last=False, count_frames="all")
    result = evaluate_video(_video("a", VIDEO_A), options)
    assert _objects(result)[2] == (4, (1 + 1 + 1 + 0.5) / 4, 1.0, pytest.approx((3 + 2 / 3) / 4))


def test_dataset_means_objects_and_pools_challenge_frames():
    options = EvalOptions(
        skip_first_and_last=False, id_groups=(IdGroup("one", (1,)), IdGroup("two", (2,)))
    )
    report = evaluate([_video("a", VIDEO_A), _video("b", VIDEO_B)], options)
    overall = report.overall
    assert overall.objects == 3 and overall.frames == 6
    # Mean over objects (0.625, 0.75, 1), not over videos.
    assert overall.j == pytest.approx((0.625 + 0.75 + 1) / 3)
    assert overall.f == pytest.approx((0.95 + 1 + 1) / 3)
    assert overall.dice == pytest.approx((2 / 3 + 5 / 6 + 1) / 3)
    # Challenge IoU pools the 6 frames: (1 + .5 + .5 + .75 + 1 + 1) / 6.
    assert overall.challenge_iou == pytest.approx(4.75 / 6) and overall.challenge_frames == 6
    one, two = report.groups
    assert (one.objects, one.j, one.challenge_iou) == (
        2,
        (0.625 + 1) / 2,
        (1 + 0.5 + 0 + 1 + 2) / 6,
    )
    assert (two.objects, two.j, two.challenge_iou) == (1, 0.75, 0.75)
    assert build_report(report.videos, options).overall == overall
