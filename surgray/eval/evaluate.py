"""Aggregate per-frame scores into per-object, per-video and per-dataset results.

Protocol, after the evaluators of SurgSAM2 (SA-V style) and ReSurgSAM2, both derived from
vos-benchmark and DAVIS 2017:

* A video's frames are its annotated (ground-truth) frames, in order; the first and last are
  skipped when `skip_first_and_last` (SurgSAM2 / SA-V / DAVIS semi-supervised) and kept
  otherwise (ReSurgSAM2, referring segmentation).
* An object is reported when it is present in the ground truth of an evaluated frame. Objects
  seen only in the prediction are not reported (but do not pollute anything: each object is
  scored on its own mask).
* `count_frames="first_appearance"` (the surgical evaluators): an object is scored from the first
  evaluated frame where it appears in the ground truth or the prediction; earlier frames, empty
  in both, do not dilute its mean. `"all"` (DAVIS): every evaluated frame counts, an empty pair
  scoring J = F = Dice = 1.
* Per object: means over its frames. Per video and per dataset: means over objects (not over
  videos). J&F = (J + F) / 2 at every level.
* Challenge IoU: per frame, the mean J over the objects present in that frame's ground truth;
  then the mean over frames that have one, pooled over all videos of the dataset. Id groups
  (e.g. EndoVis18 instruments 1-10 and tissue 11, 12, 17) get their own J/F/Dice and Challenge
  IoU, computed over the group's objects only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from surgray.eval.metrics import (
    DAVIS_BOUNDARY_THRESHOLD,
    MaskScores,
    PairCounts,
    boundary_radius,
    frame_challenge_iou,
    score_pair,
)
from surgray.eval.report import ChallengeTally, EvaluationReport, ObjectResult, Summary, VideoResult

CountFrames = Literal["first_appearance", "all"]
# A frame's prediction: a label map (H, W) of object ids, or one bool mask (H, W) per object id.
Prediction = np.ndarray | Mapping[int, np.ndarray]


@dataclass(frozen=True)
class IdGroup:
    name: str
    ids: tuple[int, ...]


ENDOVIS18_ID_GROUPS = (
    IdGroup("instrument", tuple(range(1, 11))),
    IdGroup("tissue", (11, 12, 17)),
)


@dataclass(frozen=True)
class EvalOptions:
    skip_first_and_last: bool = True
    count_frames: CountFrames = "first_appearance"
    boundary_threshold: float = DAVIS_BOUNDARY_THRESHOLD
    id_groups: tuple[IdGroup, ...] = ()

    def __post_init__(self) -> None:
        if self.count_frames not in ("first_appearance", "all"):
            raise ValueError(
                f"count_frames must be 'first_appearance' or 'all', got {self.count_frames!r}"
            )
        if self.boundary_threshold < 0:
            raise ValueError(f"boundary_threshold must be >= 0, got {self.boundary_threshold}")
        seen: dict[int, str] = {}
        names = [g.name for g in self.id_groups]
        if len(set(names)) != len(names) or "all" in names:
            raise ValueError(f"id group names must be distinct and not 'all', got {names}")
        for group in self.id_groups:
            for obj_id in group.ids:
                if obj_id in seen:
                    raise ValueError(
                        f"object id {obj_id} is in both id groups {seen[obj_id]!r} and {group.name!r}"
                    )
                seen[obj_id] = group.name

    def group_of(self, obj_id: int) -> str | None:
        return next((g.name for g in self.id_groups if obj_id in g.ids), None)

    def as_dict(self) -> dict:
        return asdict(self)


# Presets of the two surgical papers' evaluators.
SURGSAM2_PROTOCOL = EvalOptions(skip_first_and_last=True)
RESURGSAM2_PROTOCOL = EvalOptions(skip_first_and_last=False, id_groups=ENDOVIS18_ID_GROUPS)


def evaluated_frames(frames: tuple[str, ...] | list[str], options: EvalOptions) -> list[str]:
    frames = list(frames)
    return frames[1:-1] if options.skip_first_and_last else frames


def present_ids(labels: np.ndarray) -> list[int]:
    """The non-zero values of a label map, ascending."""
    if labels.dtype == np.uint8:
        import cv2  # a 256-bin histogram is far cheaper than np.unique on a full frame

        hist = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256]).ravel()
        return [int(v) for v in np.flatnonzero(hist[1:]) + 1]
    return [int(v) for v in np.unique(labels) if v != 0]


@dataclass(frozen=True)
class VideoFrameScores:
    """Scores of every (evaluated frame, object) of one video, arrays shaped (T, K)."""

    video: str
    frames: tuple[str, ...]
    object_ids: tuple[int, ...]
    scores: MaskScores


@dataclass
class VideoScorer:
    """Scores one video frame by frame, keeping only counts (memory does not grow with H x W)."""

    video: str
    boundary_threshold: float = DAVIS_BOUNDARY_THRESHOLD
    _frames: list[str] = field(default_factory=list)
    _counts: list[dict[int, PairCounts]] = field(default_factory=list)

    def add_frame(self, frame: str, gt_labels: np.ndarray, prediction: Prediction) -> None:
        gt = np.asarray(gt_labels)
        where = f"video {self.video!r}, frame {frame!r}"
        if gt.ndim != 2:
            raise ValueError(f"{where}: ground truth must be a 2-D label map, got {gt.shape}")
        if isinstance(prediction, Mapping):
            pred_masks = {int(k): np.asarray(m, dtype=bool) for k, m in prediction.items()}
            for obj_id, mask in pred_masks.items():
                if mask.shape != gt.shape:
                    raise ValueError(
                        f"{where}, object {obj_id}: predicted mask is {mask.shape[::-1]} (w, h) "
                        f"but the ground truth is {gt.shape[::-1]}"
                    )
            pred_ids = [k for k, m in pred_masks.items() if m.any()]
        else:
            pred_labels = np.asarray(prediction)
            if pred_labels.shape != gt.shape:
                raise ValueError(
                    f"{where}: predicted mask is {pred_labels.shape[::-1]} (w, h) "
                    f"but the ground truth is {gt.shape[::-1]}"
                )
            pred_ids = present_ids(pred_labels)
        radius = boundary_radius(gt.shape[0], gt.shape[1], self.boundary_threshold)
        counts: dict[int, PairCounts] = {}
        for obj_id in sorted(set(present_ids(gt)) | set(pred_ids)):
            if isinstance(prediction, Mapping):
                pred = pred_masks.get(obj_id)
                if pred is None:
                    pred = np.zeros(gt.shape, dtype=bool)
            else:
                pred = pred_labels == obj_id
            counts[obj_id] = score_pair(pred, gt == obj_id, radius)
        self._frames.append(frame)
        self._counts.append(counts)

    def result(self) -> VideoFrameScores:
        ids = tuple(sorted({k for frame in self._counts for k in frame}))
        shape = (len(self._frames), len(ids))
        # A pair absent from a frame had two empty masks: J = F = Dice = 1.
        j, f, dice = np.ones(shape), np.ones(shape), np.ones(shape)
        gt_present = np.zeros(shape, dtype=bool)
        pred_present = np.zeros(shape, dtype=bool)
        column = {obj_id: k for k, obj_id in enumerate(ids)}
        for t, frame in enumerate(self._counts):
            for obj_id, c in frame.items():
                k = column[obj_id]
                j[t, k], f[t, k], dice[t, k] = c.j, c.f, c.dice
                gt_present[t, k] = c.gt_area > 0
                pred_present[t, k] = c.pred_area > 0
        scores = MaskScores(j=j, f=f, dice=dice, gt_present=gt_present, pred_present=pred_present)
        return VideoFrameScores(self.video, tuple(self._frames), ids, scores)


def summarize_video(frame_scores: VideoFrameScores, options: EvalOptions) -> VideoResult:
    """Per-object means and Challenge IoU tallies of one video's evaluated frames."""
    s = frame_scores.scores
    objects: list[ObjectResult] = []
    for k, obj_id in enumerate(frame_scores.object_ids):
        if not s.gt_present[:, k].any():
            continue
        first = 0
        if options.count_frames == "first_appearance":
            first = int(np.argmax(s.gt_present[:, k] | s.pred_present[:, k]))
        objects.append(
            ObjectResult(
                video=frame_scores.video,
                object_id=obj_id,
                group=options.group_of(obj_id),
                frames=len(frame_scores.frames) - first,
                j=float(np.mean(s.j[first:, k])),
                f=float(np.mean(s.f[first:, k])),
                dice=float(np.mean(s.dice[first:, k])),
            )
        )
    ids = np.array(frame_scores.object_ids, dtype=np.int64)
    selections = {"all": np.ones(ids.shape, dtype=bool)}
    selections.update({g.name: np.isin(ids, g.ids) for g in options.id_groups})
    challenge = {}
    for name, cols in selections.items():
        per_frame = frame_challenge_iou(s.j[:, cols], s.gt_present[:, cols])
        kept = per_frame[~np.isnan(per_frame)]
        challenge[name] = ChallengeTally(float(np.sum(kept)), int(kept.size))
    n_frames = len(frame_scores.frames)
    return VideoResult(
        video=frame_scores.video,
        frames=n_frames,
        objects=tuple(objects),
        summary=Summary.of(frame_scores.video, objects, n_frames, challenge["all"]),
        challenge=challenge,
    )


@dataclass(frozen=True)
class VideoInput:
    """One video to evaluate: its annotated frames in order, and a loader for one frame."""

    name: str
    frames: tuple[str, ...]
    load_frame: Callable[[str], tuple[np.ndarray, Prediction]]  # -> (gt labels, prediction)


def evaluate_video(video: VideoInput, options: EvalOptions) -> VideoResult:
    scorer = VideoScorer(video.name, options.boundary_threshold)
    for frame in evaluated_frames(video.frames, options):
        gt, prediction = video.load_frame(frame)
        scorer.add_frame(frame, gt, prediction)
    return summarize_video(scorer.result(), options)


def build_report(videos: Iterable[VideoResult], options: EvalOptions) -> EvaluationReport:
    """Dataset and id-group summaries over already evaluated videos."""
    videos = tuple(videos)
    objects = [o for v in videos for o in v.objects]
    frames = sum(v.frames for v in videos)

    def pooled(name: str) -> ChallengeTally:
        return sum((v.challenge.get(name, ChallengeTally()) for v in videos), ChallengeTally())

    groups = tuple(
        Summary.of(g.name, [o for o in objects if o.group == g.name], frames, pooled(g.name))
        for g in options.id_groups
    )
    overall = Summary.of("all", objects, frames, pooled("all"))
    return EvaluationReport(
        options=options.as_dict(), videos=videos, overall=overall, groups=groups
    )


def evaluate(videos: Iterable[VideoInput], options: EvalOptions | None = None) -> EvaluationReport:
    """Score every video and summarize the dataset."""
    options = options or EvalOptions()
    return build_report((evaluate_video(v, options) for v in videos), options)
