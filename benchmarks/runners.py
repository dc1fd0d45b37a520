"""The implementations the benchmarks compare, behind one small interface.

Each runner is built untimed (weights, state, prompts on frame 0), then `frames()` yields
one `[num_objects, S, S]` tensor of mask logits per frame at the video's resolution
(the videos here are `image_size` square, so no resize is involved anywhere); the harness
times each `next()`. All sides receive the same normalised frames (ours and transformers' one
by one, the reference's all at once, as its `init_state` would hold them) and the same boxes.

- `surgray-recent`, `surgray-prune`: our `Tracker` with that memory policy. Hole filling is
  off, as it is in both references on CPU (Meta's needs its CUDA extension; transformers
  leaves it to a torchvision-only processor), so that outputs can be compared exactly.
- `sam2`: Meta's `SAM2VideoPredictor` (sam2 1.1.0), built by the parity tests' helper with
  our numbers; `init_state` runs on a one-frame JPEG folder and its frame tensor is then
  replaced by ours, so it decodes nothing and sees exactly our pixels.
- `transformers`: `Sam2VideoModel` in streaming mode with converted weights (`hf_sam2`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from surgray.model.sam2.config import ModelConfig

IMPLEMENTATIONS = ("surgray-recent", "surgray-prune", "sam2", "transformers")


@dataclass
class Workload:
    """What every implementation is given: weights, frames, boxes (model-input pixels).

    The video is `num_frames` long; its frames come from `clip`, played forwards and backwards
    when the video is longer than the clip (long-video runs without holding a long video).
    """

    cfg: ModelConfig
    state: dict[str, torch.Tensor]
    clip: np.ndarray  # [C, S, S, 3] uint8 RGB, S = cfg.image_size
    boxes: list[list[float]]  # one (x0, y0, x1, y1) per object, on frame 0
    num_frames: int | None = None  # None: the clip's length

    def __post_init__(self) -> None:
        if self.num_frames is None:
            self.num_frames = len(self.clip)
        self._normalised: torch.Tensor | None = None

    @property
    def frame_size(self) -> tuple[int, int]:
        return tuple(self.clip.shape[1:3])

    def clip_index(self, frame_idx: int) -> int:
        period = max(2 * len(self.clip) - 2, 1)
        pos = frame_idx % period
        return pos if pos < len(self.clip) else period - pos

    def frames(self) -> Iterator[np.ndarray]:
        """The video's uint8 frames, one at a time (views, nothing is kept)."""
        for t in range(self.num_frames):
            yield self.clip[self.clip_index(t)]

    def model_frame(self, frame_idx: int) -> torch.Tensor:
        """Frame `frame_idx` normalised, [3, S, S], as a new tensor (as a stream would give)."""
        if self._normalised is None:
            from surgray.model.sam2.preprocess import to_model_input

            self._normalised = to_model_input(self.clip, self.cfg.image_size)
        return self._normalised[self.clip_index(frame_idx)].clone()

    def model_input(self) -> torch.Tensor:
        """The whole video normalised, [T, 3, S, S] float32 (what the reference holds)."""
        video = torch.empty(self.num_frames, 3, self.cfg.image_size, self.cfg.image_size)
        for t in range(self.num_frames):
            video[t] = self.model_frame(t)
        return video


def synthetic_workload(
    cfg: ModelConfig, num_frames: int, num_objects: int, seed: int = 0
) -> tuple[np.ndarray, list[list[float]]]:
    """A synthetic surgical clip at the model's input size and boxes of its `num_objects`
    largest objects on frame 0 (from the exact ground truth). Long-term events (leaving the
    view, occlusion, smoke, blur) are off: every object stays in view, so every compared
    mask has content."""
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip

    size = cfg.image_size
    clip = generate_clip(
        SyntheticClipConfig(
            num_frames=num_frames,
            height=size,
            width=size,
            num_instruments=3,
            leave_and_return=False,
            occlusion=False,
            smoke=False,
            motion_blur=False,
        ),
        seed=seed,
    )
    first = clip.masks[0]
    ids, counts = np.unique(first[first > 0], return_counts=True)
    if len(ids) < num_objects:
        raise ValueError(f"frame 0 of the clip shows {len(ids)} objects, {num_objects} asked")
    boxes = []
    for obj_id in ids[np.argsort(-counts, kind="stable")][:num_objects]:
        ys, xs = np.nonzero(first == obj_id)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())])
    return clip.frames, boxes


def random_weights(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights every parameter of which matters (the parity tests' `randomize_`)."""
    from devtools.sam2_reference import randomize_
    from surgray.model.sam2.network import SAM2Model

    torch.manual_seed(seed)  # buffers (the prompt encoder's Fourier matrix) stay as built
    return randomize_(SAM2Model(cfg), seed=seed)


# ------------------------------------------------------------------ runners
class SurgrayRunner:
    def __init__(self, work: Workload, policy: str) -> None:
        from surgray.model.checkpoints.sam2_checkpoint import build_model
        from surgray.tracking.postprocess import PostprocessConfig
        from surgray.tracking.tracker import Tracker

        model = build_model(work.cfg)
        model.load_state_dict(work.state, strict=True)
        self.tracker = Tracker(
            model,
            {"name": policy},
            postprocess=PostprocessConfig(fill_hole_area=0),
            keep_logits=True,
        )
        self.work = work
        self.video = self.tracker.start("bench", work.frame_size, num_frames=work.num_frames)
        for obj_id, box in enumerate(work.boxes, start=1):
            self.tracker.add_box(self.video, obj_id, 0, box)

    def frames(self) -> Iterator[torch.Tensor]:
        for frame in self.work.frames():
            result = self.tracker.step(self.video, frame)
            yield torch.stack([obj.logits for obj in result.objects])


class MetaRunner:
    def __init__(self, work: Workload, offload_video_to_cpu: bool = False) -> None:
        from PIL import Image

        from devtools.sam2_reference import build_reference

        self.predictor = build_reference(work.cfg, video=True)
        self.predictor.load_state_dict(work.state, strict=True)
        images = work.model_input()
        with tempfile.TemporaryDirectory() as folder:
            Image.fromarray(work.clip[0]).save(Path(folder) / "00000.jpg")
            state = self.predictor.init_state(folder, offload_video_to_cpu=offload_video_to_cpu)
        state["images"] = images
        state["num_frames"] = images.shape[0]
        state["video_height"], state["video_width"] = work.frame_size
        state["cached_features"] = {}
        for obj_id, box in enumerate(work.boxes, start=1):
            self.predictor.add_new_points_or_box(state, 0, obj_id, box=np.asarray(box))
        self.state = state

    def frames(self) -> Iterator[torch.Tensor]:
        for _, _, masks in self.predictor.propagate_in_video(self.state):
            yield masks[:, 0]


class TransformersRunner:
    def __init__(self, work: Workload) -> None:
        from hf_sam2 import HFStreamingTracker, load_hf_model

        model = load_hf_model(work.cfg, work.state)
        self.tracker = HFStreamingTracker(model, work.cfg.image_size)
        for obj_id, box in enumerate(work.boxes, start=1):
            self.tracker.add_box(obj_id, torch.tensor(box))
        self.work = work

    def frames(self) -> Iterator[torch.Tensor]:
        for t in range(self.work.num_frames):
            yield self.tracker.step(self.work.model_frame(t))


def build_runner(name: str, work: Workload, offload_video_to_cpu: bool = False):
    if name.startswith("surgray-"):
        return SurgrayRunner(work, policy=name.split("-", 1)[1])
    if name == "sam2":
        return MetaRunner(work, offload_video_to_cpu)
    if name == "transformers":
        return TransformersRunner(work)
    raise KeyError(f"unknown implementation {name!r}; known: {', '.join(IMPLEMENTATIONS)}")


# ------------------------------------------------------------------ output comparison
@dataclass
class OutputCheck:
    """How far one implementation's outputs are from the reference's, frame after frame."""

    max_logit_diff: float = 0.0  # largest |logit - reference logit| over all pixels
    min_pixel_agreement: float = 1.0  # worst (frame, object): share of pixels with one label
    min_iou: float = 1.0  # worst IoU of the binary masks (1.0 where both are empty)
    coverage_sum: float = 0.0  # reference masks' foreground share, summed (non-trivial check)
    compared: int = 0

    def update(self, logits: torch.Tensor, reference: torch.Tensor) -> None:
        """logits, reference: [N, H, W] mask logits of one frame."""
        logits, reference = torch.as_tensor(logits).float(), torch.as_tensor(reference).float()
        if logits.shape != reference.shape:
            raise ValueError(
                f"outputs differ in shape: {tuple(logits.shape)} vs {tuple(reference.shape)}"
            )
        self.max_logit_diff = max(self.max_logit_diff, float((logits - reference).abs().max()))
        ours, ref = logits > 0, reference > 0
        for a, b in zip(ours, ref):
            self.min_pixel_agreement = min(self.min_pixel_agreement, float((a == b).float().mean()))
            union = int((a | b).sum())
            iou = 1.0 if union == 0 else int((a & b).sum()) / union
            self.min_iou = min(self.min_iou, iou)
            self.coverage_sum += float(b.float().mean())
            self.compared += 1

    @property
    def mean_coverage(self) -> float:
        return self.coverage_sum / max(self.compared, 1)

    def identical(self, threshold: float = 0.999) -> bool:
        return self.compared > 0 and self.min_pixel_agreement >= threshold
