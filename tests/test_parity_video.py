"""Video tracking of SAM2Model against Meta's reference SAM2VideoPredictor.

The reference runs `init_state` on a folder of JPEG frames of exactly `image_size` pixels
(so its resize is the identity), `add_new_points_or_box` and `propagate_in_video`; ours
encodes the same decoded frames in one batch and steps `track_frame` frame by frame, with
memories chosen by our `recent` policy (surgray.tracking.memory) and every object of a frame
in one call. In the micro test the two objects are prompted on different frames (0 and 3),
so one step mixes objects with different numbers of memories and pointers.

Both sides hold memories rounded to bf16 and compute in float32: the reference predictor
casts its memories to bf16 and, on CPU, needs them handed back as float32
(research/dependencies.md, last note), which the wrapper below does without changing a value.
Compared frames must show the objects (reference score > 0, mask 5-95% of the frame), and
perturbing a single memory-attention weight by 1e-2 must break the agreement.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.sam2_reference import OFFICIAL_YAMLS, build_reference, randomize_
from surgray.model.checkpoints.variants import get_variant, micro_config
from surgray.model.sam2.frame_types import ObjectPrompt
from surgray.model.sam2.network import SAM2Model
from surgray.model.sam2.preprocess import to_model_input
from surgray.tracking.memory.base import build_policy

NUM_FRAMES = 9  # the prompted frame + 8 propagated
PERTURBED_WEIGHT = "memory_attention.layers.0.cross_attn_image.v_proj.weight"


def write_frames(folder, size: int, count: int = NUM_FRAMES) -> np.ndarray:
    """JPEG frames of a disk and a box drifting over texture; returns them as decoded."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = (rng.random((size // 8, size // 8, 3)) * 120).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    yy, xx = np.mgrid[:size, :size]
    decoded = []
    for t in range(count):
        img = base.copy()
        cx, cy = size * (0.3 + 0.02 * t), size * 0.55
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.18 * size) ** 2] = (220, 90, 80)
        top, left = int(size * 0.12), int(size * (0.62 - 0.01 * t))
        img[top : top + size // 4, left : left + size // 4] = (40, 170, 210)
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(img).save(path, quality=95)
        decoded.append(np.array(Image.open(path).convert("RGB")))
    return np.stack(decoded)


def run_reference(predictor, folder, objects: dict[int, dict]) -> dict[int, dict]:
    """Per frame: mask logits [N, H, W] at video resolution and object scores [N].

    objects: obj_id -> {"frame": prompted frame, plus add_new_points_or_box arguments}.
    """

    def as_float32(method):
        def wrapped(*args, **kwargs):
            out = method(*args, **kwargs)
            if isinstance(out[0], dict):  # _run_single_frame_inference: (compact out, masks)
                if out[0]["maskmem_features"] is not None:
                    out[0]["maskmem_features"] = out[0]["maskmem_features"].float()
                return out
            return out[0].float(), out[1]  # _run_memory_encoder: (features, pos)

        return wrapped

    predictor._run_single_frame_inference = as_float32(predictor._run_single_frame_inference)
    predictor._run_memory_encoder = as_float32(predictor._run_memory_encoder)
    state = predictor.init_state(str(folder))
    for obj_id, prompt in objects.items():
        arguments = {k: v for k, v in prompt.items() if k != "frame"}
        predictor.add_new_points_or_box(state, prompt["frame"], obj_id, **arguments)
    results = {}
    for frame_idx, _, masks in predictor.propagate_in_video(state):
        scores = []
        for obj_idx in range(len(objects)):
            outputs = state["output_dict_per_obj"][obj_idx]
            out = outputs["cond_frame_outputs"].get(frame_idx)
            if out is None:
                out = outputs["non_cond_frame_outputs"][frame_idx]
            scores.append(float(out["object_score_logits"]))
        results[frame_idx] = {"logits": masks[:, 0].clone(), "scores": torch.tensor(scores)}
    return results


def _prompt(spec: dict) -> ObjectPrompt:
    def tensor(key, dtype=torch.float32):
        return torch.tensor(spec[key], dtype=dtype) if key in spec else None

    return ObjectPrompt(
        points=tensor("points"), labels=tensor("labels", torch.int64), box=tensor("box")
    )


def run_ours(
    model: SAM2Model, frames: np.ndarray, objects: dict[int, dict]
) -> dict[int, torch.Tensor]:
    """Per frame: mask logits [N, S, S].

    Like the reference, prompted frames are answered first (no memory), then every frame is
    tracked in order with all objects not prompted there in ONE track_frame call, each with
    its own policy's memories (objects prompted on different frames remember different
    numbers of frames and pointers, so the step mixes memory shapes).
    """
    count = len(frames)
    images = to_model_input(frames, model.image_size)
    features = model.encode_frames(images)
    specs = list(objects.values())
    policies = [build_policy({"name": "recent"}, num_frames=count) for _ in specs]
    masks = torch.empty(count, len(specs), model.image_size, model.image_size)
    for t in sorted({spec["frame"] for spec in specs}):
        prompted = [i for i, spec in enumerate(specs) if spec["frame"] == t]
        out = model.track_frame(
            features[t],
            [None] * len(prompted),
            t,
            prompts=[_prompt(specs[i]) for i in prompted],
            num_frames=count,
        )
        for j, i in enumerate(prompted):
            policies[i].add(out.entry(j))
            masks[t, i] = out.high_res_masks[j, 0]
    for t in range(count):
        tracked = [i for i, spec in enumerate(specs) if spec["frame"] != t]
        if not tracked:
            continue
        selections = [policies[i].select(t) for i in tracked]
        out = model.track_frame(features[t], selections, t, num_frames=count)
        for j, i in enumerate(tracked):
            policies[i].add(out.entry(j))
            masks[t, i] = out.high_res_masks[j, 0]
    return dict(enumerate(masks))


def assert_video_parity(reference, ours, atol: float, min_agreement: float = 0.999) -> None:
    for t, expected in reference.items():
        logits = expected["logits"]
        assert (expected["scores"] > 0).all(), f"frame {t}: reference lost an object"
        coverage = (logits > 0).flatten(1).float().mean(1)
        assert ((coverage > 0.05) & (coverage < 0.95)).all(), (
            f"frame {t}: coverage {coverage.tolist()}"
        )
        diff = (ours[t] - logits).abs().max().item()
        assert diff <= atol, f"frame {t}: max logit difference {diff:.3g} > {atol}"
        agreement = ((ours[t] > 0) == (logits > 0)).float().mean().item()
        assert agreement >= min_agreement, f"frame {t}: masks agree on {agreement:.4%}"


# Object 2 is prompted on frame 3: on frames 0-2 it is tracked backwards from a future
# conditioning frame, without pointers, while object 1 has them.
MICRO_OBJECTS = {
    1: {"frame": 0, "points": [[38.0, 70.0]], "labels": [1]},
    2: {"frame": 3, "box": [76.0, 14.0, 110.0, 48.0]},
}


@pytest.fixture(scope="module")
def micro_case(tmp_path_factory):
    torch.set_grad_enabled(False)
    cfg = micro_config()
    folder = tmp_path_factory.mktemp("micro_frames")
    frames = write_frames(folder, cfg.image_size)
    ref = build_reference(cfg, video=True)
    state = randomize_(ref, seed=3)
    reference = run_reference(ref, folder, MICRO_OBJECTS)
    yield cfg, frames, state, reference
    torch.set_grad_enabled(True)


def test_micro_two_objects_prompted_on_different_frames_match_reference(micro_case):
    cfg, frames, state, reference = micro_case
    model = SAM2Model(cfg).eval()
    model.load_state_dict(state, strict=True)
    ours = run_ours(model, frames, MICRO_OBJECTS)
    assert len(reference) == NUM_FRAMES
    assert_video_parity(reference, ours, atol=1e-4)


def test_perturbed_memory_attention_weight_breaks_parity(micro_case):
    cfg, frames, state, reference = micro_case
    perturbed = {k: v.clone() for k, v in state.items()}
    perturbed[PERTURBED_WEIGHT][0, 0] += 1e-2
    model = SAM2Model(cfg).eval()
    model.load_state_dict(perturbed, strict=True)
    ours = run_ours(model, frames, MICRO_OBJECTS)
    # Object 1's prompted frame reads no memory; every tracked frame does.
    assert (ours[0][0] - reference[0]["logits"][0]).abs().max() <= 1e-4
    with pytest.raises(AssertionError, match="max logit difference"):
        assert_video_parity({t: reference[t] for t in range(1, NUM_FRAMES)}, ours, atol=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~40 s of compute on 2 idle cores; shared CI machines are slower
def test_hiera_tiny_512_matches_reference(tmp_path):
    torch.set_grad_enabled(False)
    try:
        cfg = get_variant("sam2.1_hiera_tiny", image_size=512)
        frames = write_frames(tmp_path / "frames", cfg.image_size)
        ref = build_reference(cfg, video=True, yaml_name=OFFICIAL_YAMLS["sam2.1_hiera_tiny"])
        state = randomize_(ref, seed=4)
        objects = {1: {"frame": 0, "points": [[150.0, 280.0]], "labels": [1]}}
        reference = run_reference(ref, tmp_path / "frames", objects)
        model = SAM2Model(cfg).eval()
        model.load_state_dict(state, strict=True)
        ours = run_ours(model, frames, objects)
        assert_video_parity(reference, ours, atol=1e-2)
    finally:
        torch.set_grad_enabled(True)
