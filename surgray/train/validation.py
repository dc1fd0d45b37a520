"""J&F on a held-out split: semi-supervised tracking from a first-frame mask prompt.

For each video, the objects visible on its first annotated frame are prompted with their
ground-truth masks there and tracked through the next frames, one frame at a time, with SAM2's
`recent` memory policy at its inference settings (`SAM2Model.track_frame` in eval mode).
Predictions are brought back to the video's resolution and scored with the surgical
evaluators' protocol (`surgray.eval.evaluate.SURGSAM2_PROTOCOL`: first and last frame skipped,
per-object means, then the mean over objects). Objects that only appear later are left out of
the ground truth, since nothing prompted them.

The trivial baselines of the demo gates are scored the same way: repeating the first-frame
mask on every frame, and predicting nothing. For referring models one more reference row,
`predictor="same_kind"`, answers each object with the ground-truth masks of every object of its
kind: what a text head that tells only instrument from tissue would score with perfect masks,
so a text J&F near it means the head is not telling categories apart.

Referring models (`ReSurgSAM2` with a text encoder or text tower) are also scored from text
(`predictor="text"`): each object visible on the first frame is added to a `Tracker` by its
referring expression (`TrainVideo.expression`) before that frame is stepped, and the tracker
runs ReSurgSAM2's pipeline (stage-1 search, CIFS, then tracking with memory) over the frames.
Objects without an expression cannot be prompted: they are left out and counted
(`ValidationResult.skipped_objects`).

Objects whose category is known (`TrainVideo.category`) are also scored per kind
(`ValidationResult.by_kind`: instrument, tissue), since a referring head can find tissue by its
colour long before it tells one instrument from another.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from surgray.data.categories import category_kind, try_canonical_category
from surgray.eval.evaluate import SURGSAM2_PROTOCOL, VideoInput, evaluate
from surgray.eval.report import EvaluationReport
from surgray.model.sam2.frame_types import ObjectPrompt
from surgray.model.sam2.preprocess import to_model_input
from surgray.tracking.memory.base import build_policy
from surgray.tracking.memory.config import RecentPolicyConfig
from surgray.train.clip_data import TrainVideo
from surgray.train.progress import format_duration, show

Predictor = Literal["model", "text", "repeat_first", "empty", "same_kind"]
EVAL_PREFIX = "[surgray train --evaluate]"


@dataclass(frozen=True)
class KindScore:
    """Mean J&F over the scored objects of one kind (instrument, tissue, other)."""

    jf: float
    objects: int


@dataclass(frozen=True)
class ValidationResult:
    jf: float
    j: float
    f: float
    videos: int
    objects: int
    frames: int
    skipped_objects: int = 0  # text predictor: objects on frame 0 without an expression
    by_kind: dict[str, KindScore] = field(default_factory=dict)  # objects of known category

    def describe_kinds(self) -> str:
        """ "instrument 0.412 (33 objects), tissue 0.251 (16 objects)", or ""."""
        return ", ".join(
            f"{kind} {score.jf:.3f} ({score.objects} objects)"
            for kind, score in self.by_kind.items()
        )

    def as_metrics(self, prefix: str = "val_") -> dict[str, float]:
        metrics = {
            f"{prefix}jf": self.jf,
            f"{prefix}j": self.j,
            f"{prefix}f": self.f,
            f"{prefix}objects": float(self.objects),
        }
        if self.skipped_objects:
            metrics[f"{prefix}skipped_objects"] = float(self.skipped_objects)
        return metrics


def can_refer(model) -> bool:
    """Whether `model` can be prompted by text (a ReSurgSAM2 that can encode text)."""
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    if not isinstance(model, ReSurgSAM2):
        return False
    return model.text_encoder is not None or getattr(model, "text_tower", None) is not None


def inference_policy_config(model) -> RecentPolicyConfig:
    cfg = model.cfg
    return RecentPolicyConfig(
        num_maskmem=max(cfg.memory.num_maskmem, 1),
        use_obj_ptrs=cfg.object_pointer.use_obj_ptrs_in_encoder,
        max_obj_ptrs=cfg.object_pointer.max_obj_ptrs_in_encoder,
        temporal_stride=cfg.memory.memory_temporal_stride_for_eval,
        max_cond_frames_in_attn=cfg.memory.max_cond_frames_in_attn,
        only_past_pointers=cfg.object_pointer.only_obj_ptrs_in_the_past_for_eval,
    )


@torch.no_grad()
def track_from_first_mask(
    model, frames: np.ndarray, first_masks: np.ndarray, chunk: int = 8
) -> np.ndarray:
    """[T, H, W, 3] uint8 frames and [N, H, W] bool first-frame masks -> [T, N, H, W] bool."""
    was_training = model.training
    model.eval()
    device = model.device
    height, width = frames.shape[1:3]
    count = first_masks.shape[0]
    policies = [build_policy(inference_policy_config(model)) for _ in range(count)]
    out_masks = np.zeros((frames.shape[0], count, height, width), dtype=bool)
    try:
        for start in range(0, frames.shape[0], chunk):
            images = to_model_input(
                frames[start : start + chunk],
                model.image_size,
                model.cfg.image_mean,
                model.cfg.image_std,
            ).to(device)
            backbone = model.encode_images(images)
            for k in range(images.shape[0]):
                t = start + k
                feats = model.frame_features(backbone, k)
                if t == 0:
                    prompts = [
                        ObjectPrompt(mask=torch.from_numpy(m).to(device)) for m in first_masks
                    ]
                    selections = [None] * count
                else:
                    prompts = None
                    selections = [p.select(t) for p in policies]
                out = model.track_frame(feats, selections, t, prompts=prompts)
                for i, policy in enumerate(policies):
                    policy.add(out.entry(i))
                logits = F.interpolate(
                    out.low_res_masks.float(),
                    size=(height, width),
                    mode="bilinear",
                    align_corners=False,
                )
                out_masks[t] = (logits[:, 0] > 0).cpu().numpy()
    finally:
        model.train(was_training)
    return out_masks


def track_from_text(model, frames: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """[T, H, W, 3] uint8 frames and N expressions (added before frame 0) -> [T, N, H, W]
    bool masks from the streaming tracker's referring pipeline (SAM2's `recent` policy)."""
    from surgray.tracking.tracker import Tracker

    was_training = model.training
    height, width = frames.shape[1:3]
    out_masks = np.zeros((frames.shape[0], len(texts), height, width), dtype=bool)
    try:
        tracker = Tracker(model, {"name": "recent"}, autocast_dtype=None)
        state = tracker.start("validation", (height, width), num_frames=frames.shape[0])
        for i, text in enumerate(texts):
            tracker.add_text(state, i + 1, text)
        for t, frame in enumerate(frames):
            for obj in tracker.step(state, frame).objects:
                out_masks[t, obj.obj_id - 1] = obj.mask
        tracker.close(state)
    finally:
        # Also drops what the model cached under the tracker's inference_mode (category
        # embeddings), which autograd would refuse in the next training step.
        model.train(was_training)
    return out_masks


def _predict(
    predictor: Predictor,
    model,
    video: TrainVideo,
    frames: np.ndarray,
    ids: np.ndarray,
    prompted: list[int],
    texts: Sequence[str],
) -> np.ndarray:
    """[T, N, H, W] masks of the prompted objects on the loaded frames."""
    if predictor == "same_kind":
        return _same_kind_union(video, ids, prompted)
    first = np.stack([ids[0] == obj for obj in prompted])
    count, (height, width) = first.shape[0], first.shape[1:]
    if predictor == "model":
        return track_from_first_mask(model, frames, first)
    if predictor == "text":
        return track_from_text(model, frames, texts)
    if predictor == "repeat_first":
        return np.broadcast_to(first[None], (frames.shape[0], count, height, width))
    if predictor == "empty":
        return np.zeros((frames.shape[0], count, height, width), dtype=bool)
    raise ValueError(f"unknown predictor {predictor!r}")


def validate(
    videos: Sequence[TrainVideo],
    model=None,
    max_videos: int = 4,
    max_frames: int = 16,
    predictor: Predictor = "model",
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """J&F over the first `max_videos` videos (first `max_frames` annotated frames each).

    predictor "model": the model from first-frame masks; "text": the model from each object's
    referring expression (a referring model; objects without one are skipped and counted);
    "repeat_first" / "empty": the trivial baselines; "same_kind": the ground truth of every
    object of the object's kind (see the module docstring). `progress` gets a line per video.
    """
    if predictor == "text" and not can_refer(model):
        raise ValueError(
            "validation from text needs a ReSurgSAM2 with a text encoder or text tower, got "
            f"{type(model).__name__}"
        )
    inputs, skipped, kinds = [], 0, {}
    chosen = list(videos)[:max_videos]
    started = time.monotonic()
    for number, video in enumerate(chosen, start=1):
        if progress is not None and number > 1:
            progress(_video_line(predictor, number - 1, len(chosen), started))
        positions = tuple(range(min(max_frames, video.num_frames)))
        if len(positions) < 3:
            continue  # the protocol skips the first and last frame: nothing left to score
        frames, ids = video.load(positions)
        prompted = [int(v) for v in np.unique(ids[0]) if v != 0]
        texts: list[str] = []
        if predictor == "text":
            with_text = [obj for obj in prompted if video.expression(obj)]
            skipped += len(prompted) - len(with_text)
            prompted = with_text
            texts = [video.expression(obj) for obj in prompted]
        if not prompted:
            continue
        kinds.update({(video.video_id, obj): _kind(video, obj) for obj in prompted})
        predicted = _predict(predictor, model, video, frames, ids, prompted, texts)
        gt = np.where(np.isin(ids, prompted), ids, 0)
        names = tuple(f"{p:05d}" for p in positions)

        def load(name, gt=gt, predicted=predicted, prompted=prompted):
            t = int(name)
            return gt[t], {obj: predicted[t, i] for i, obj in enumerate(prompted)}

        inputs.append(VideoInput(video.video_id, names, load))
    if progress is not None and chosen:
        progress(_video_line(predictor, len(chosen), len(chosen), started))
    if not inputs:
        if predictor == "text" and skipped:
            raise ValueError(
                f"validation from text: none of the {skipped} objects on the first frames has "
                "a referring expression"
            )
        raise ValueError("validation: no video with at least 3 frames and an object on frame 0")
    report = evaluate(inputs, SURGSAM2_PROTOCOL)
    overall = report.overall
    return ValidationResult(
        jf=float(overall.jf),
        j=float(overall.j),
        f=float(overall.f),
        videos=len(inputs),
        objects=overall.objects,
        frames=overall.frames,
        skipped_objects=skipped,
        by_kind=_scores_by_kind(report, kinds),
    )


def _video_line(predictor: str, done: int, total: int, started: float) -> str:
    """`model: 3/16 videos, 2.1 s/video, ETA 27s` (the caller adds its prefix)."""
    per_video = (time.monotonic() - started) / max(done, 1)
    left = "done" if done >= total else f"ETA {format_duration(per_video * (total - done))}"
    return f"{predictor}: {done}/{total} videos, {per_video:.1f} s/video, {left}"


def _kind(video: TrainVideo, obj_id: int) -> str | None:
    category = video.category(obj_id)
    canonical = try_canonical_category(category) if category else None
    return category_kind(canonical) if canonical else None


def _same_kind_union(video: TrainVideo, ids: np.ndarray, prompted: list[int]) -> np.ndarray:
    """[T, N, H, W]: for each prompted object, every object of its kind (itself alone when its
    kind is unknown)."""
    present = [int(v) for v in np.unique(ids) if v != 0]
    kinds = {obj: _kind(video, obj) for obj in present}
    unions = []
    for obj in prompted:
        group = [o for o in present if kinds[o] is not None and kinds[o] == kinds[obj]]
        unions.append(np.isin(ids, group or [obj]))
    return np.stack(unions, axis=1)


def _scores_by_kind(
    report: EvaluationReport, kinds: dict[tuple[str, int], str | None]
) -> dict[str, KindScore]:
    grouped: dict[str, list[float]] = {}
    for result in report.objects:
        kind = kinds.get((result.video, result.object_id))
        if kind is not None:
            grouped.setdefault(kind, []).append(result.jf)
    return {
        kind: KindScore(float(np.mean(values)), len(values))
        for kind, values in sorted(grouped.items())
    }


def compare_with_baselines(
    videos: Sequence[TrainVideo],
    model,
    max_videos: int = 16,
    max_frames: int = 24,
    progress: Callable[[str], None] | None = show,
) -> dict[str, ValidationResult]:
    """The model (from masks, and from text for referring models) and both trivial baselines
    on the same videos (the demo checkpoint's gates: J&F >= 0.70 and at least 0.15 above the
    better baseline, from masks); for referring models also the same-kind reference row.
    Writes a progress line per predictor and per video (`surgray train --evaluate` ran for
    minutes without a word) unless `progress` is None."""
    names = ["model", "text", "repeat_first", "empty", "same_kind"]
    if not can_refer(model):
        names.remove("text")
        names.remove("same_kind")
    say = None if progress is None else (lambda text: progress(f"{EVAL_PREFIX} {text}"))
    results = {}
    for number, name in enumerate(names, start=1):
        if say is not None:
            say(f"scoring {name} ({number}/{len(names)})")
        results[name] = validate(videos, model, max_videos, max_frames, name, say)
    return results
