"""Prompt simulation: plans, boxes, error clicks and SAM2S evaluation clicks.

Expected clicks are worked out by hand on small grids, or computed by Meta's reference
(`sam2.modeling.sam2_utils`, `sam2.utils.misc`); random samplers are checked for their
rules (where a click may fall, with which label) and their frequencies under a fixed seed.
"""

from __future__ import annotations

import pytest
import torch

from surgray.train.prompts import (
    Clicks,
    PromptSimConfig,
    box_clicks,
    center_error_click,
    correction_click,
    error_click,
    evaluation_clicks,
    initial_prompt,
    mask_boxes,
    plan_clip_prompts,
    uniform_error_click,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def random_blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """n masks made of a few random rectangles each."""
    g = gen(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        for _ in range(3):
            y0, x0 = torch.randint(0, size - 2, (2,), generator=g).tolist()
            h, w = torch.randint(1, size // 2, (2,), generator=g).tolist()
            masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


# ---------------------------------------------------------------- config and plans


def test_config_rules():
    with pytest.raises(ValueError, match="num_frames_to_correct"):
        PromptSimConfig(num_init_cond_frames=2, num_frames_to_correct=1)
    with pytest.raises(ValueError):
        PromptSimConfig(prob_point_input=1.5)
    with pytest.raises(ValueError):
        PromptSimConfig(num_corrections=3)
    cfg = PromptSimConfig()
    assert (cfg.prob_point_input, cfg.prob_box_input, cfg.num_correction_clicks) == (0.5, 0.5, 7)
    assert cfg.add_all_frames_to_correct_as_cond is True


def test_plan_is_seeded():
    cfg = PromptSimConfig(num_init_cond_frames=2, num_frames_to_correct=3)
    plans = [plan_clip_prompts(8, cfg, gen(7)) for _ in range(2)]
    assert plans[0] == plans[1]
    varied = {repr(plan_clip_prompts(8, cfg, gen(s))) for s in range(20)}
    assert len(varied) > 3


def test_plan_rules_over_many_clips():
    cfg = PromptSimConfig(num_init_cond_frames=2, num_frames_to_correct=4)
    g = gen(1)
    kinds = {"mask": 0, "point": 0, "box": 0}
    gt = square(8, 2, 2, 3)[None]
    num_init_seen, num_correct_seen = set(), set()
    trials = 2000
    for _ in range(trials):
        plan = plan_clip_prompts(8, cfg, g)
        assert plan.init_cond_frames[0] == 0
        assert len(set(plan.init_cond_frames)) == len(plan.init_cond_frames)
        num_init_seen.add(len(plan.init_cond_frames))
        if plan.use_point_input:
            assert plan.frames_to_correct[: len(plan.init_cond_frames)] == plan.init_cond_frames
            assert len(set(plan.frames_to_correct)) == len(plan.frames_to_correct)
            num_correct_seen.add(len(plan.frames_to_correct))
        else:
            assert plan.frames_to_correct == []
        kinds[initial_prompt(gt, plan.use_point_input, cfg, g).kind] += 1
    assert num_init_seen == {1, 2}  # random 1..num_init_cond_frames
    assert num_correct_seen == {1, 2, 3, 4}  # random num_init..num_frames_to_correct
    # SAM2 recipe: 50 % mask, 25 % point, 25 % box (binomial sd <= 0.011 at 2000 draws)
    assert kinds["mask"] / trials == pytest.approx(0.5, abs=0.03)
    assert kinds["point"] / trials == pytest.approx(0.25, abs=0.03)
    assert kinds["box"] / trials == pytest.approx(0.25, abs=0.03)


def test_plan_fixed_counts_and_conditioning():
    cfg = PromptSimConfig(
        prob_point_input=1.0,
        num_init_cond_frames=2,
        rand_init_cond_frames=False,
        num_frames_to_correct=3,
        rand_frames_to_correct=False,
    )
    plan = plan_clip_prompts(6, cfg, gen(3))
    assert plan.use_point_input
    assert len(plan.init_cond_frames) == 2 and len(plan.frames_to_correct) == 3
    corrected_only = [t for t in plan.frames_to_correct if t not in plan.init_cond_frames]
    assert plan.is_conditioning(corrected_only[0])  # add_all_frames_to_correct_as_cond
    rest = [t for t in range(6) if t not in plan.frames_to_correct]
    assert not any(plan.is_conditioning(t) for t in rest)
    assert plan.processing_order[:2] == plan.init_cond_frames
    assert sorted(plan.processing_order) == list(range(6))
    off = plan_clip_prompts(
        6, cfg.model_copy(update={"add_all_frames_to_correct_as_cond": False}), gen(3)
    )
    assert not off.is_conditioning(corrected_only[0])


def test_plan_for_an_image_and_short_clips():
    mask_only = PromptSimConfig(prob_point_input=0.0)
    image = plan_clip_prompts(1, mask_only, gen(0))
    assert image.use_point_input and image.init_cond_frames == [0]
    assert image.frames_to_correct == [0]
    many = PromptSimConfig(
        num_init_cond_frames=5, rand_init_cond_frames=False, num_frames_to_correct=5
    )
    assert plan_clip_prompts(3, many, gen(0)).init_cond_frames[0] == 0
    assert len(plan_clip_prompts(3, many, gen(0)).init_cond_frames) == 3
    with pytest.raises(ValueError, match="num_frames"):
        plan_clip_prompts(0, many, gen(0))


# ---------------------------------------------------------------- boxes


def test_mask_boxes_literal_and_empty():
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[0, 1:3, 2:5] = True  # rows 1-2, cols 2-4
    assert mask_boxes(mask).tolist() == [[2.0, 1.0, 4.0, 2.0], [5.0, 4.0, 0.0, 0.0]]


def test_boxes_match_the_reference_without_noise():
    from sam2.modeling.sam2_utils import sample_box_points

    masks = random_blobs(6, 16, seed=2)
    ref_coords, ref_labels = sample_box_points(masks[:, None], noise=0.0)
    ours = box_clicks(masks, gen(0), noise=0.0)
    torch.testing.assert_close(ours.coords, ref_coords.float())
    assert torch.equal(ours.labels, ref_labels)


def test_box_noise_stays_within_its_bounds():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 5:45] = True  # 40 wide (x1 - x0 = 39), 10 high (9)
    masks[1, 0:64, 0:64] = True  # whole image: clamped at the borders
    masks[2, 30:31, 30:31] = True  # a single pixel: no room to move
    exact = mask_boxes(masks)
    reach = torch.tensor([[3.9, 0.9], [6.3, 6.3], [0.0, 0.0]]).repeat(1, 2)
    for seed in range(20):
        clicks = box_clicks(masks, gen(seed), noise=0.1, noise_bound=20)
        boxes = clicks.coords.reshape(3, 4)
        assert bool(((boxes - exact).abs() <= reach + 1e-5).all())
        assert bool((boxes >= 0).all()) and bool((boxes <= 63).all())
    assert torch.equal(box_clicks(masks, gen(4)).coords, box_clicks(masks, gen(4)).coords)
    assert not torch.equal(box_clicks(masks, gen(4)).coords, box_clicks(masks, gen(5)).coords)
    capped = box_clicks(masks[:1], gen(0), noise=0.5, noise_bound=2.0).coords.reshape(4)
    assert bool(((capped - exact[0]).abs() <= 2.0 + 1e-5).all())


# ---------------------------------------------------------------- uniform error clicks


def _at(mask: torch.Tensor, clicks: Clicks, i: int = 0) -> bool:
    x, y = clicks.coords[i, 0].long().tolist()
    return bool(mask[i, y, x]) if mask.ndim == 3 else bool(mask[y, x])


def test_uniform_click_rules():
    gt = square(6, 1, 1, 3)[None]
    first = uniform_error_click(gt, None, gen(0))
    assert first.coords.shape == (1, 1, 2) and first.labels.tolist() == [[1]]
    assert _at(gt, first)
    # prediction = gt plus an extra blob: only false positives -> negative click inside them
    pred = gt | square(6, 4, 4, 2)[None]
    fp = pred & ~gt
    for seed in range(10):
        click = uniform_error_click(gt, pred, gen(seed))
        assert click.labels.tolist() == [[0]] and _at(fp, click)
    # a perfect prediction: negative click on the background
    for seed in range(10):
        click = uniform_error_click(gt, gt.clone(), gen(seed))
        assert click.labels.tolist() == [[0]] and not _at(gt, click)


def test_uniform_click_frequencies():
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, 0, :3] = True  # three false negatives (pred empty there)
    pred = torch.zeros_like(gt)
    pred[0, 3, 3] = True  # one false positive
    g = gen(11)
    counts: dict[tuple[int, int, int], int] = {}
    trials = 2000
    for _ in range(trials):
        c = uniform_error_click(gt, pred, g)
        key = (*c.coords[0, 0].long().tolist(), int(c.labels[0, 0]))
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 3, 0)}
    for value in counts.values():  # each error pixel 1/4 (sd ~0.01)
        assert value / trials == pytest.approx(0.25, abs=0.03)


# ---------------------------------------------------------------- centre clicks


def test_center_click_hand_values():
    gt = square(9, 1, 1, 7)[None]  # rows/cols 1..7: centre (4, 4), depth 4
    click = center_error_click(gt, None)
    assert click.coords.tolist() == [[[4.0, 4.0]]] and click.labels.tolist() == [[1]]
    # the image border counts as boundary: a full mask's centre is its middle pixel
    assert center_error_click(torch.ones(1, 5, 5, dtype=torch.bool), None).coords.tolist() == [
        [[2.0, 2.0]]
    ]
    # deeper false-positive region than false-negative one -> negative at the FP centre
    gt2 = torch.zeros(1, 9, 9, dtype=torch.bool)
    gt2[0, 0, 0:2] = True  # 2-pixel false negative (depth 1)
    pred = square(9, 3, 3, 5)[None]  # 5x5 false positive, centre (5, 5), depth 3
    click = center_error_click(gt2, pred)
    assert click.coords.tolist() == [[[5.0, 5.0]]] and click.labels.tolist() == [[0]]


def test_center_click_matches_the_reference():
    from sam2.modeling.sam2_utils import sample_one_point_from_error_center

    gt = random_blobs(8, 24, seed=5)
    pred = random_blobs(8, 24, seed=6)
    for prediction in (None, pred):
        ref_points, ref_labels = sample_one_point_from_error_center(
            gt[:, None], None if prediction is None else prediction[:, None]
        )
        ours = center_error_click(gt, prediction)
        torch.testing.assert_close(ours.coords, ref_points)
        assert torch.equal(ours.labels, ref_labels)


# ---------------------------------------------------------------- corrections


def test_correction_click_from_errors_or_from_gt():
    gt = square(8, 2, 2, 4)[None]
    perfect_logits = gt.float() * 2 - 1  # > 0 exactly on the gt
    errors_only = PromptSimConfig(prob_sample_from_gt=0.0)
    click = correction_click(gt, perfect_logits[:, None], errors_only, gen(0))
    assert click.labels.tolist() == [[0]] and not _at(gt, click)
    from_gt = PromptSimConfig(prob_sample_from_gt=1.0)
    click = correction_click(gt, perfect_logits, from_gt, gen(0))
    assert click.labels.tolist() == [[1]] and _at(gt, click)
    centre = PromptSimConfig(prob_sample_from_gt=0.0, click_sampling="center")
    half = torch.where(torch.arange(8)[None, None, :] < 4, perfect_logits, -1.0)
    click = correction_click(gt, half, centre, gen(0))  # missing columns 4-5 of the square
    assert click.labels.tolist() == [[1]] and click.coords.tolist() == [[[4.0, 2.0]]]
    with pytest.raises(ValueError, match="does not match"):
        correction_click(gt, torch.zeros(1, 4, 4), errors_only, gen(0))


def test_clicks_then_appends():
    first = Clicks(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.int32))
    both = first.then(Clicks(torch.ones(2, 1, 2), torch.zeros(2, 1, dtype=torch.int32)))
    assert both.num_clicks == 2 and both.num_objects == 2
    assert both.labels.tolist() == [[1, 0], [1, 0]]


def test_bad_masks_and_methods_are_named():
    with pytest.raises(ValueError, match="bool"):
        uniform_error_click(torch.ones(1, 4, 4), None, gen(0))
    with pytest.raises(ValueError, match="predicted masks"):
        center_error_click(
            torch.ones(1, 4, 4, dtype=torch.bool), torch.ones(1, 4, 5, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="unknown method"):
        error_click(torch.ones(1, 4, 4, dtype=torch.bool), None, "random", gen(0))


# ---------------------------------------------------------------- evaluation clicks


def toy_model(size: int):
    """A real (if simple) click-to-mask function: 3x3 squares around positive clicks,
    minus 3x3 squares around negative ones."""
    calls = []

    def predict(points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(points.clone())
        mask = torch.zeros(size, size, dtype=torch.bool)
        for (x, y), label in zip(points.long().tolist(), labels.tolist()):
            patch = (slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2))
            if label == 1:
                mask[patch] = True
        for (x, y), label in zip(points.long().tolist(), labels.tolist()):
            if label == 0:
                mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = False
        return mask

    return predict, calls


def test_evaluation_clicks_hand_sequence():
    gt = square(9, 2, 2, 5)  # rows/cols 2..6
    predict, calls = toy_model(9)
    clicks = evaluation_clicks(gt, predict, 3)
    # 1: object centre (4, 4). The 3x3 prediction leaves a 1-pixel ring of false negatives,
    # all at depth 1: 2: first in raster order, (2, 2). The square around it spills onto
    # row 1 / col 1 (false positives, depth 1) while the ring's rest is still missed (depth
    # 1): a tie is not "deeper", so 3: negative at the first false positive, (1, 1).
    assert clicks.points.tolist() == [[4.0, 4.0], [2.0, 2.0], [1.0, 1.0]]
    assert clicks.labels.tolist() == [1, 1, 0]
    assert len(calls) == 2


def test_evaluation_clicks_stop_when_right_and_reject_bad_input():
    gt = square(9, 3, 3, 3)
    predict, calls = toy_model(9)
    clicks = evaluation_clicks(gt, predict, 3)  # one click at (4, 4) already gives the gt
    assert clicks.points.tolist() == [[4.0, 4.0]] and len(calls) == 1
    with pytest.raises(ValueError, match="empty"):
        evaluation_clicks(torch.zeros(5, 5, dtype=torch.bool), predict, 2)
    with pytest.raises(ValueError, match=r"one \[H, W\] mask"):
        evaluation_clicks(gt[None], predict, 2)
    with pytest.raises(ValueError, match="pred_fn returned shape"):
        evaluation_clicks(gt, lambda points, labels: torch.zeros(4, 4, dtype=torch.bool), 2)
