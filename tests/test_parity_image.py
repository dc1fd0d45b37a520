"""Image path of SAM2Model against Meta's reference SAM2Base, with one random state dict.

The reference is built from the tiny YAML with our micro numbers (devtools/sam2_reference.py),
its parameters re-randomised (fan-in scaled, so activations keep their scale), and that state
dict is loaded strictly into ours. Compared: the image encoder's FPN levels (after the
decoder's conv_s0/conv_s1), and first-frame masks / IoU / object score / pointer / memory for
a point, a box and a mask prompt. Seeds and prompts are chosen so the reference finds the
object (score > 0) with a mask covering 5-95% of the frame: the comparison cannot pass on
empty or full masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from devtools.sam2_reference import build_reference, randomize_
from surgray.model.checkpoints.variants import micro_config
from surgray.model.sam2.frame_types import ObjectPrompt
from surgray.model.sam2.image_predictor import ImagePredictor
from surgray.model.sam2.network import SAM2Model
from surgray.model.sam2.preprocess import to_model_input

SEED = 0
TOL = 1e-4  # logits, IoU, scores: both sides run the same float32 arithmetic


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured background with a bright disk and a darker box (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((height // 8 + 1, width // 8 + 1, 3)) * 110).astype(np.uint8)
    img = img.repeat(8, 0).repeat(8, 1)[:height, :width].copy()
    yy, xx = np.mgrid[:height, :width]
    img[(yy - 0.5 * height) ** 2 + (xx - 0.35 * width) ** 2 < (0.2 * min(height, width)) ** 2] = (
        230,
        90,
        70,
    )
    img[int(0.15 * height) : int(0.4 * height), int(0.65 * width) : int(0.9 * width)] = (
        40,
        160,
        200,
    )
    return img


@pytest.fixture(scope="module")
def pair():
    torch.set_grad_enabled(False)
    cfg = micro_config().updated(memory={"storage_dtype": "fp32"})
    ref = build_reference(cfg, video=False)
    state = randomize_(ref, SEED)
    ours = SAM2Model(cfg).eval()
    ours.load_state_dict(state, strict=True)
    yield ref, ours, state
    torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def encoded(pair):
    ref, ours, _ = pair
    size = ours.image_size
    images = to_model_input(
        np.stack([synthetic_image(size, size, 0), synthetic_image(size, size, 1)]), size
    )
    return images, ref.forward_image(images), ours.encode_images(images)


def test_image_encoder_levels_match(encoded):
    _, ref_out, our_out = encoded
    assert len(our_out.backbone_fpn) == len(ref_out["backbone_fpn"]) == 3
    for ref_level, our_level in zip(ref_out["backbone_fpn"], our_out.backbone_fpn):
        assert our_level.shape == ref_level.shape
        assert ref_level.abs().mean() > 1e-2
        torch.testing.assert_close(our_level, ref_level, rtol=0, atol=1e-5)
    for ref_pos, our_pos in zip(ref_out["vision_pos_enc"], our_out.vision_pos_enc):
        torch.testing.assert_close(our_pos, ref_pos, rtol=0, atol=1e-6)


def _reference_first_frame(ref, ref_out, prompt: dict):
    """The reference's track_step on frame 0 of the batch, plus the memory its video
    predictor stores (encoded from the low-res mask upsampled, clicks binarised)."""
    one = {k: [t[:1] for t in v] if isinstance(v, list) else v[:1] for k, v in ref_out.items()}
    _, feats, pos, sizes = ref._prepare_backbone_features(one)
    out = ref.track_step(
        frame_idx=0,
        is_init_cond_frame=True,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=prompt.get("points"),
        mask_inputs=prompt.get("mask"),
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=8,
        run_mem_encoder=False,
    )
    upsampled = F.interpolate(
        out["pred_masks"],
        size=(ref.image_size, ref.image_size),
        mode="bilinear",
        align_corners=False,
    )
    memory, _ = ref._encode_new_memory(feats, sizes, upsampled, out["object_score_logits"], True)
    return out, memory


def _prompts(size: int):
    point = torch.tensor([[0.35 * size, 0.5 * size]])
    box = torch.tensor([0.6 * size, 0.1 * size, 0.95 * size, 0.45 * size])
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((yy - 0.5 * size) ** 2 + (xx - 0.35 * size) ** 2) < (0.2 * size) ** 2
    return {
        "point": (
            {
                "points": {
                    "point_coords": point[None],
                    "point_labels": torch.tensor([[1]], dtype=torch.int32),
                }
            },
            ObjectPrompt(points=point, labels=torch.tensor([1])),
        ),
        "box": (
            {
                "points": {
                    "point_coords": box.reshape(1, 2, 2),
                    "point_labels": torch.tensor([[2, 3]], dtype=torch.int32),
                }
            },
            ObjectPrompt(box=box),
        ),
        "mask": ({"mask": mask[None, None].float()}, ObjectPrompt(mask=mask)),
    }


@pytest.mark.parametrize("kind", ["point", "box", "mask"])
def test_first_frame_outputs_match(pair, encoded, kind):
    ref, ours, _ = pair
    _, ref_out, our_out = encoded
    ref_prompt, our_prompt = _prompts(ours.image_size)[kind]
    expected, expected_memory = _reference_first_frame(ref, ref_out, ref_prompt)
    got = ours.track_frame(
        ours.frame_features(our_out, 0), [None], 0, prompts=[our_prompt], num_frames=8
    )

    score = expected["object_score_logits"].reshape(-1)
    coverage = (expected["pred_masks"] > 0).float().mean().item()
    assert score.item() > 0, "choose a seed/prompt where the reference sees the object"
    assert 0.05 < coverage < 0.95, f"reference mask covers {coverage:.1%} of the frame"
    torch.testing.assert_close(got.low_res_masks, expected["pred_masks"], rtol=0, atol=TOL)
    torch.testing.assert_close(got.object_score_logits, score, rtol=0, atol=TOL)
    torch.testing.assert_close(got.obj_ptr, expected["obj_ptr"], rtol=0, atol=TOL)
    torch.testing.assert_close(got.memory_features, expected_memory, rtol=0, atol=TOL)
    assert got.memory_features.abs().mean() > 1e-2


def test_objects_batched_in_one_step_match_one_by_one(pair, encoded):
    """Point, box and mask objects in ONE track_frame call (the reference runs them one by one)."""
    ref, ours, _ = pair
    _, ref_out, our_out = encoded
    prompts = _prompts(ours.image_size)
    kinds = ["box", "point", "mask", "point"]
    got = ours.track_frame(
        ours.frame_features(our_out, 0), [None] * 4, 0, prompts=[prompts[k][1] for k in kinds]
    )
    for i, kind in enumerate(kinds):
        expected, expected_memory = _reference_first_frame(ref, ref_out, prompts[kind][0])
        torch.testing.assert_close(
            got.low_res_masks[i : i + 1], expected["pred_masks"], rtol=0, atol=TOL
        )
        torch.testing.assert_close(got.obj_ptr[i : i + 1], expected["obj_ptr"], rtol=0, atol=TOL)
        torch.testing.assert_close(
            got.memory_features[i : i + 1], expected_memory, rtol=0, atol=TOL
        )
    assert [len(iou) for iou in got.multimask_iou] == [1, 3, 1, 3]
    assert got.is_conditioning == [True] * 4


def _reference_image_heads(ref, images, clicks, mask_logits, multimask):
    """What the reference's image predictor computes, through SAM2Base's own methods."""
    out = ref.forward_image(images)
    _, feats, _, sizes = ref._prepare_backbone_features(out)
    feats[-1] = feats[-1] + ref.no_mem_embed
    maps = [f.permute(1, 2, 0).reshape(1, -1, *s) for f, s in zip(feats, sizes)]
    points = None if clicks is None else {"point_coords": clicks[0], "point_labels": clicks[1]}
    return ref._forward_sam_heads(maps[-1], points, mask_logits, maps[:-1], multimask)


def test_image_predictor_matches_reference_heads(pair):
    ref, ours, _ = pair
    height, width = 96, 160  # not square, not the model size: resizing is exercised
    image = synthetic_image(height, width, 3)
    predictor = ImagePredictor(ours)
    predictor.set_image(image)
    images = to_model_input(image, ours.image_size)
    sx, sy = ours.image_size / width, ours.image_size / height

    pred = predictor.predict(points=[[56, 48]], labels=[1], multimask=True)
    clicks = (torch.tensor([[[56 * sx, 48 * sy]]]), torch.tensor([[1]], dtype=torch.int32))
    low, _, ious, *_, scores = _reference_image_heads(ref, images, clicks, None, True)
    assert scores.item() > 0
    torch.testing.assert_close(torch.from_numpy(pred.low_res_logits), low[0], rtol=0, atol=TOL)
    torch.testing.assert_close(torch.from_numpy(pred.predicted_iou), ious[0], rtol=0, atol=TOL)
    full = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(torch.from_numpy(pred.logits), full, rtol=0, atol=TOL)
    assert pred.masks.shape == (3, height, width) and pred.masks.dtype == bool
    assert 0.05 < pred.masks[pred.best].mean() < 0.95

    # Refinement: a box plus a negative click plus the earlier logits as a dense prompt.
    box = [100, 10, 150, 40]
    refined = predictor.predict(
        points=[[120, 30]],
        labels=[0],
        box=box,
        mask_input=pred.low_res_logits[pred.best],
        multimask=False,
    )
    corners = torch.tensor([[box[0] * sx, box[1] * sy], [box[2] * sx, box[3] * sy]])
    clicks = (
        torch.cat([corners, torch.tensor([[120 * sx, 30 * sy]])])[None],
        torch.tensor([[2, 3, 0]], dtype=torch.int32),
    )
    dense = torch.from_numpy(pred.low_res_logits[pred.best])[None, None]
    low, _, ious, *_ = _reference_image_heads(ref, images, clicks, dense, False)
    torch.testing.assert_close(torch.from_numpy(refined.low_res_logits), low[0], rtol=0, atol=TOL)
    assert refined.masks.shape == (1, height, width)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p.predict(), "empty prompt"),
        (lambda p: p.predict(points=[[10, 10]]), "together"),
        (lambda p: p.predict(points=[[170, 10]], labels=[1]), "outside"),
        (lambda p: p.predict(points=[[10, -1]], labels=[1]), "outside"),
        (lambda p: p.predict(points=[[10, 10]], labels=[2]), "labels must be 1"),
        (lambda p: p.predict(box=[50, 10, 40, 20]), "x0 < x1"),
        (lambda p: p.predict(box=[0, 0, 10, 200]), "y1"),
        (lambda p: p.predict(mask_input=np.zeros((5, 5), np.float32)), "mask_input"),
        (lambda p: p.set_image(np.zeros((20, 20, 3), np.float32)), "uint8"),
        (lambda p: p.set_image(np.zeros((20, 20, 4), np.uint8)), "H x W x 3"),
        (lambda p: p.set_image(np.zeros((20, 20), np.uint8)), "H x W x 3"),
        (lambda p: p.set_image(torch.zeros(20, 20, 3, dtype=torch.uint8)), "numpy array"),
    ],
)
def test_image_predictor_rejects_bad_input(pair, call, message):
    _, ours, _ = pair
    predictor = ImagePredictor(ours)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(points=[[1, 1]], labels=[1])
    predictor.set_image(synthetic_image(96, 160))
    with pytest.raises((ValueError, TypeError), match=message):
        call(predictor)
