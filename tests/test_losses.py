"""Exact tests of the training losses on tiny tensors.

Expected values are written out from the formulas (with `math`), never taken from surgray:
with logits 0, ln 3 and -ln 3 the sigmoid is 1/2, 3/4 and 1/4, so every term has a closed
form. Notation: S = 1 + 2 e^-1/2 + 2 e^-2 is the sum of the 1-D Gaussian weights (sigma 1)
at offsets -2..2.
"""

from __future__ import annotations

import math

import pytest
import torch

from surgray.train.losses import (
    DecoderStep,
    FramePrediction,
    FrameTarget,
    LossConfig,
    SAM2Loss,
    actual_iou,
    average_object_count,
    dice_per_mask,
    focal_per_mask,
    gaussian_kernel,
    iou_prediction_l1,
    object_score_bce,
    sigmoid_focal_loss,
    soften_masks,
    tsl_info_nce,
)

LN2, LN3, LN4, LN4_3 = math.log(2), math.log(3), math.log(4), math.log(4 / 3)
E_HALF, E_TWO = math.exp(-0.5), math.exp(-2.0)
S = 1 + 2 * E_HALF + 2 * E_TWO


def row(*values: float) -> torch.Tensor:
    """A [1, 1, 1, W] map (one object, one candidate, one row)."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


# ---------------------------------------------------------------- elementary terms


def test_focal_elementwise_matches_hand_values():
    logits = torch.tensor([0.0, 0.0, LN3, -LN3, 0.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5])
    expected = [
        0.25 * 0.5**2 * LN2,  # p = 1/2, positive: alpha 0.25
        0.75 * 0.5**2 * LN2,  # p = 1/2, negative: 1 - alpha
        0.25 * 0.25**2 * LN4_3,  # p = 3/4, positive: -ln p = ln 4/3, (1 - p_t)^2 = 1/16
        0.25 * 0.75**2 * LN4,  # p = 1/4, positive: -ln p = ln 4
        0.5 * 0.5**2 * LN2,  # soft target 1/2: alpha_t = 1/2, BCE = ln 2
    ]
    got = sigmoid_focal_loss(logits, targets)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_focal_without_alpha_and_gamma_is_bce():
    got = sigmoid_focal_loss(torch.tensor([LN3]), torch.tensor([0.0]), alpha=-1, gamma=0)
    assert float(got) == pytest.approx(LN4, rel=1e-6)


def test_focal_per_mask_averages_over_pixels():
    got = focal_per_mask(row(0.0, LN3), row(1.0, 0.0))
    # second pixel: p = 3/4 on background: p_t = 1/4, (3/4)^2, alpha 0.75, -ln(1/4)
    expected = (0.25 * 0.25 * LN2 + 0.75 * 0.5625 * LN4) / 2
    assert got.shape == (1, 1)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_dice_hand_values():
    # p = 1/2 on 4 pixels, one target pixel: 1 - (2*1/2 + 1) / (2 + 1 + 1) = 1/2
    got = dice_per_mask(torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    assert float(got) == pytest.approx(0.5, rel=1e-6)
    # p = (3/4, 1/4), t = (1, 0): 1 - (2*3/4 + 1) / (1 + 1 + 1) = 1/6
    assert float(dice_per_mask(row(LN3, -LN3), row(1.0, 0.0))) == pytest.approx(1 / 6, rel=1e-6)


def test_dice_matches_textbook_formula_for_hard_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, 5, generator=gen)
    targets = (torch.rand(3, 2, 4, 5, generator=gen) > 0.5).float()
    p = torch.sigmoid(logits).flatten(2)
    t = targets.flatten(2)
    textbook = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    torch.testing.assert_close(dice_per_mask(logits, targets), textbook)


def test_actual_iou_and_l1_error():
    logits = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])
    assert float(actual_iou(logits, target)) == pytest.approx(0.5)  # 2 of 4 pixels
    assert float(iou_prediction_l1(torch.tensor([[0.8]]), logits, target)) == pytest.approx(0.3)
    # empty prediction of an empty target scores 0 (union clamped to 1), as in SAM2
    empty = torch.zeros(1, 1, 2, 2)
    assert float(actual_iou(-torch.ones(1, 1, 2, 2), empty)) == 0.0


def test_object_score_bce():
    got = object_score_bce(torch.tensor([[LN3], [LN3]]), torch.tensor([1.0, 0.0]))
    assert got.tolist() == pytest.approx([LN4_3, LN4], rel=1e-6)


# ---------------------------------------------------------------- ARL label softening


def test_gaussian_kernel_values():
    kernel = gaussian_kernel(5, 1.0)
    assert kernel.shape == (5, 5)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(kernel[2, 2]) == pytest.approx(1 / S**2, rel=1e-6)
    assert float(kernel[0, 0]) == pytest.approx(math.exp(-4) / S**2, rel=1e-6)
    assert float(kernel[2, 3]) == pytest.approx(E_HALF / S**2, rel=1e-6)


def test_gaussian_kernel_rejects_bad_sizes():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(5, 0.0)


def test_soften_single_pixel_gives_the_kernel():
    mask = torch.zeros(1, 5, 5)
    mask[0, 2, 2] = 1
    soft = soften_masks(mask)
    assert float(soft[0, 2, 2]) == pytest.approx(1 / S**2, rel=1e-6)
    assert float(soft[0, 0, 0]) == pytest.approx(math.exp(-4) / S**2, rel=1e-6)
    assert float(soft[0, 1, 2]) == pytest.approx(E_HALF / S**2, rel=1e-6)


def test_soften_edge_profile_and_replicate_padding():
    mask = torch.zeros(1, 1, 4, 5)
    mask[..., :3] = 1  # left three columns
    soft = soften_masks(mask)
    assert soft.shape == mask.shape
    # rows are identical (replicate padding vertically); across a row, with the left border
    # replicated: col 0 sees only ones; col 1 misses the weight at +2; and so on
    expected = [1.0, (S - E_TWO) / S, (1 + E_HALF + E_TWO) / S, (E_HALF + E_TWO) / S, E_TWO / S]
    for r in range(4):
        assert soft[0, 0, r].tolist() == pytest.approx(expected, rel=1e-6)
    # a mask filling the image is unchanged (zero padding would darken its border)
    torch.testing.assert_close(soften_masks(torch.ones(2, 6, 6)), torch.ones(2, 6, 6))


def test_soften_rejects_multichannel():
    with pytest.raises(ValueError, match="soften_masks"):
        soften_masks(torch.ones(1, 2, 4, 4))


# ---------------------------------------------------------------- TSL InfoNCE


def _unit_with_first(a: float, b: float) -> list[float]:
    return [a, b, math.sqrt(1 - a * a - b * b)]


def test_tsl_info_nce_hand_values():
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    emb = torch.tensor(
        [
            _unit_with_first(0.01, 0.0),  # cosines (0.01, 0) -> logits (1, 0), category 0
            _unit_with_first(0.3, 0.2),  # no category: skipped
            _unit_with_first(0.01, 0.0),  # logits (1, 0), category 1
        ]
    )
    emb = emb * torch.tensor([[5.0], [1.0], [0.2]])  # cosine ignores the norm
    categories = torch.tensor([0, -1, 1])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert float(tsl_info_nce(emb, text * 3, categories)) == pytest.approx(expected, rel=1e-5)


def test_tsl_without_categories_is_zero_but_connected():
    emb = torch.randn(2, 3, requires_grad=True)
    loss = tsl_info_nce(emb, torch.eye(3), torch.tensor([-1, -1]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros(2, 3))


def test_tsl_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        tsl_info_nce(torch.randn(2, 3), torch.eye(3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="width"):
        tsl_info_nce(torch.randn(2, 4), torch.eye(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="category ids for"):
        tsl_info_nce(torch.randn(2, 3), torch.eye(3), torch.tensor([0]))


# ---------------------------------------------------------------- SAM2Loss


def _step(logits: torch.Tensor, ious: list[list[float]], scores: list[float]) -> DecoderStep:
    return DecoderStep(logits, torch.tensor(ious), torch.tensor(scores).reshape(-1, 1))


def test_single_mask_frame_with_an_absent_object():
    # object A present (target 1 0), object B absent; 1 x 2 images
    logits = torch.tensor([[[[LN3, -LN3]]], [[[0.0, 0.0]]]])
    step = _step(logits, [[0.5], [0.9]], [LN3, LN3])
    target = FrameTarget(torch.tensor([[[1, 0]], [[0, 0]]]))
    loss = SAM2Loss()([FramePrediction([step])], [target])
    # A's focal: both pixels have p_t = 3/4: (1/16) ln(4/3) times alpha 1/4 and 3/4, mean
    focal = (0.25 + 0.75) / 2 * 0.0625 * LN4_3 / 2  # / 2 objects; B dropped (absent)
    dice = (1 / 6) / 2
    iou = abs(0.5 - 1.0) / 2  # A's mask equals its target: actual IoU 1
    object_class = (LN4_3 + LN4) / 2  # B still supervised: "absent" with logit ln 3
    got = loss.as_floats()
    assert got["focal"] == pytest.approx(focal, rel=1e-6)
    assert got["dice"] == pytest.approx(dice, rel=1e-6)
    assert got["iou"] == pytest.approx(iou, rel=1e-6)
    assert got["object_class"] == pytest.approx(object_class, rel=1e-6)
    assert got["tsl"] == 0.0
    assert got["total"] == pytest.approx(20 * focal + dice + iou + object_class, rel=1e-6)


def _three_candidates() -> torch.Tensor:
    # target (1, 0): candidate 1 is right, 0 is unsure, 2 is inverted
    return torch.tensor([[[[0.0, 0.0]], [[LN3, -LN3]], [[-LN3, LN3]]]], requires_grad=True)


def test_multimask_backpropagates_only_the_best_candidate():
    logits = _three_candidates()
    step = _step(logits, [[0.2, 0.9, 0.4]], [LN3])
    target = FrameTarget(torch.tensor([[[1, 0]]]))
    loss = SAM2Loss()([FramePrediction([step])], [target])
    got = loss.as_floats()
    assert got["focal"] == pytest.approx(0.5 * 0.0625 * LN4_3, rel=1e-6)  # candidate 1
    assert got["dice"] == pytest.approx(1 / 6, rel=1e-6)
    # IoU head on all candidates: actual IoUs (0, 1, 0) -> errors (0.2, 0.1, 0.4)
    assert got["iou"] == pytest.approx(0.7 / 3, rel=1e-6)
    loss.total.backward()
    assert torch.equal(logits.grad[0, 0], torch.zeros(1, 2))
    assert torch.equal(logits.grad[0, 2], torch.zeros(1, 2))
    assert bool((logits.grad[0, 1] != 0).all())


def test_candidate_choice_uses_the_loss_weights():
    # target 1 0 0 0. X = (0, -ln3, 0, 0): focal ~0.079, dice 7/15; Y = -ln3 everywhere:
    # focal ~0.059, dice 1/2. Unweighted, X is better (0.546 < 0.559); with focal x 20, Y is.
    x = [0.0, -LN3, 0.0, 0.0]
    y = [-LN3] * 4
    logits = torch.tensor([x, y]).reshape(1, 2, 1, 4)
    step = _step(logits, [[0.0, 0.0]], [LN3])
    target = FrameTarget(torch.tensor([[[1, 0, 0, 0]]]))
    weighted = SAM2Loss()([FramePrediction([step])], [target])
    focal_y = (0.25 * 0.75**2 * LN4 + 3 * 0.75 * 0.25**2 * LN4_3) / 4
    assert float(weighted.focal) == pytest.approx(focal_y, rel=1e-6)
    assert float(weighted.dice) == pytest.approx(0.5, rel=1e-6)
    plain = SAM2Loss(LossConfig(focal=1.0))([FramePrediction([step])], [target])
    assert float(plain.dice) == pytest.approx(7 / 15, rel=1e-6)


def test_iou_on_best_candidate_only_when_configured():
    step = _step(_three_candidates(), [[0.2, 0.9, 0.4]], [LN3])
    loss = SAM2Loss(LossConfig(supervise_all_iou=False))(
        [FramePrediction([step])], [FrameTarget(torch.tensor([[[1, 0]]]))]
    )
    assert float(loss.iou) == pytest.approx(0.1, rel=1e-5)


def test_correction_steps_and_frames_add_up():
    step = _step(_three_candidates().detach(), [[0.2, 0.9, 0.4]], [LN3])
    target = FrameTarget(torch.tensor([[[1, 0]]]))
    loss_fn = SAM2Loss()
    one = loss_fn([FramePrediction([step])], [target]).as_floats()
    two_steps = loss_fn([FramePrediction([step, step])], [target]).as_floats()
    three_frames = loss_fn([FramePrediction([step])] * 3, [target] * 3).as_floats()
    for key, value in one.items():
        assert two_steps[key] == pytest.approx(2 * value, rel=1e-6)
        assert three_frames[key] == pytest.approx(3 * value, rel=1e-6)


def test_num_objects_override_rescales():
    step = _step(_three_candidates().detach(), [[0.2, 0.9, 0.4]], [LN3])
    target = FrameTarget(torch.tensor([[[1, 0]]]))
    base = SAM2Loss()([FramePrediction([step])], [target]).as_floats()
    halved = SAM2Loss()([FramePrediction([step])], [target], num_objects=2.0).as_floats()
    assert halved["total"] == pytest.approx(base["total"] / 2, rel=1e-6)


def test_arl_focal_uses_softened_labels():
    # one object, 1 x 5 image, target 1 1 1 0 0, logits 0 (p = 1/2): the focal of a pixel
    # with soft label t is ln2 * (1/4) * (0.75 - 0.5 t), so the mean needs only mean(t)
    soft = [1.0, (S - E_TWO) / S, (1 + E_HALF + E_TWO) / S, (E_HALF + E_TWO) / S, E_TWO / S]
    expected = LN2 * 0.25 * (0.75 - 0.5 * sum(soft) / 5)
    step = _step(torch.zeros(1, 1, 1, 5), [[1.0]], [LN3])
    target = FrameTarget(torch.tensor([[[1, 1, 1, 0, 0]]]))
    arl = SAM2Loss(LossConfig(arl=True))([FramePrediction([step])], [target])
    hard = SAM2Loss()([FramePrediction([step])], [target])
    assert float(arl.focal) == pytest.approx(expected, rel=1e-6)
    assert float(hard.focal) == pytest.approx(LN2 * 0.25 * (0.75 - 0.5 * 3 / 5), rel=1e-6)
    assert float(arl.dice) == pytest.approx(float(hard.dice))  # dice keeps hard labels


def test_tsl_term_in_the_total():
    step = _step(torch.tensor([[[[LN3, -LN3]]]]), [[1.0]], [LN3])
    frame = FramePrediction([step], semantic_embedding=torch.tensor([_unit_with_first(0.01, 0)]))
    target = FrameTarget(torch.tensor([[[1, 0]]]), category_ids=torch.tensor([1]))
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    loss = SAM2Loss()([frame], [target], text_embeddings=text)
    tsl = math.log(1 + math.e)
    assert float(loss.tsl) == pytest.approx(tsl, rel=1e-5)
    focal, dice, object_class = 0.5 * 0.0625 * LN4_3, 1 / 6, LN4_3
    assert float(loss.total) == pytest.approx(20 * focal + dice + object_class + 0.1 * tsl)
    custom = SAM2Loss(LossConfig(focal=0, dice=0, iou=0, object_class=0, tsl=2.0))
    assert float(custom([frame], [target], text).total) == pytest.approx(2 * tsl, rel=1e-5)


def test_from_heads_uses_high_resolution_candidates():
    from surgray.model.sam2.frame_types import HeadsOutput

    heads = HeadsOutput(
        low_res_multimasks=torch.zeros(2, 3, 4, 4),
        high_res_multimasks=torch.ones(2, 3, 16, 16),
        multimask_iou=torch.full((2, 3), 0.5),
        low_res_masks=torch.zeros(2, 1, 4, 4),
        high_res_masks=torch.zeros(2, 1, 16, 16),
        predicted_iou=torch.zeros(2),
        obj_ptr=torch.zeros(2, 8),
        object_score_logits=torch.zeros(2, 1),
    )
    step = DecoderStep.from_heads(heads)
    assert step.mask_logits.shape == (2, 3, 16, 16)
    assert step.iou_pred is heads.multimask_iou


def test_bad_inputs_are_named():
    loss_fn = SAM2Loss()
    good = _step(torch.zeros(1, 1, 1, 2), [[1.0]], [0.0])
    target = FrameTarget(torch.tensor([[[1, 0]]]))
    with pytest.raises(ValueError, match=r"mask_logits must be \[N=1, M, 1, 2\]"):
        loss_fn([FramePrediction([_step(torch.zeros(1, 1, 2, 2), [[1.0]], [0.0])])], [target])
    with pytest.raises(ValueError, match="iou_pred must be"):
        loss_fn([FramePrediction([_step(torch.zeros(1, 1, 1, 2), [[1.0, 1.0]], [0.0])])], [target])
    with pytest.raises(ValueError, match="object_score_logits"):
        loss_fn([FramePrediction([_step(torch.zeros(1, 1, 1, 2), [[1.0]], [0.0, 1.0])])], [target])
    with pytest.raises(ValueError, match=r"target masks must be \[N, H, W\]"):
        loss_fn([FramePrediction([good])], [FrameTarget(torch.ones(1, 1, 1, 2))])
    with pytest.raises(ValueError, match="2 frame predictions for 1 targets"):
        loss_fn([FramePrediction([good])] * 2, [target])
    with pytest.raises(ValueError, match="at least one decoder step"):
        loss_fn([FramePrediction([])], [target])
    semantic = FramePrediction([good], semantic_embedding=torch.ones(1, 3))
    with pytest.raises(ValueError, match="no text_embeddings"):
        loss_fn([semantic], [FrameTarget(target.masks, torch.tensor([0]))])
    with pytest.raises(ValueError, match="no category_ids"):
        loss_fn([semantic], [target], text_embeddings=torch.eye(3))


def test_loss_config_validation():
    with pytest.raises(ValueError):
        LossConfig(focal=-1.0)
    with pytest.raises(ValueError):
        LossConfig(focall=20.0)


def test_average_object_count_without_a_process_group():
    assert average_object_count(3) == 3.0
    assert average_object_count(0) == 1.0
