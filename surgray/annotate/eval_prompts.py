"""Prompts from ground truth, for running the annotation pipeline as a benchmark.

The papers' protocols, each applied at an object's first appearance in the ground truth
(the first frame for objects visible from the start, as in SAM2's `vos_inference`):

* `mask`: the ground-truth mask (SurgSAM2, and SAM2's semi-supervised VOS evaluation);
* `box`: the tight box around the ground-truth mask;
* `clicks`: 1, 3 or 5 clicks simulated against the mask with the model in the loop (SAM2S):
  the first at the centre of the object, each later one at the centre of the largest error of
  the prediction so far (`surgray.train.clicks.evaluation_clicks`, run on the actor).

Objects go in one joint pass per video, or in one pass each (`per_object`; the pipeline then
sees one work item per object, named `<video>.obj<id>`). Videos must be frame folders or video
files read as they are: a reader that crops its frames (raw EndoVis17) is refused.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from surgray.annotate.manifest import VideoTask
from surgray.annotate.prompts import MaskRle, ObjectPrompt, VideoPrompts
from surgray.annotate.session import ClickTarget
from surgray.data.files import DatasetError
from surgray.data.sample import VideoSample

PromptKind = Literal["mask", "box", "clicks"]
Passes = Literal["joint", "per_object"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class FirstAppearance:
    obj_id: int
    frame: int
    mask: np.ndarray  # [H, W] bool


@dataclass(frozen=True)
class EvalItem:
    """One pass over one video: the task the pipeline runs and its simulated clicks."""

    sample_id: str  # the dataset's video id
    task: VideoTask
    clicks: tuple[ClickTarget, ...]
    obj_ids: tuple[int, ...]
    frame_count: int


def work_id(video_id: str, obj_id: int | None = None) -> str:
    """An output-safe id for a dataset video (and object, in per-object passes)."""
    base = _UNSAFE.sub("_", video_id).lstrip("._-")[:180] or "video"
    return base if obj_id is None else f"{base}.obj{obj_id:03d}"


def video_source(sample: VideoSample) -> str:
    """A URI `VideoReader` decodes into exactly the sample's frames, in order."""
    from surgray.data.sources import ImageFrames, VideoFileFrames
    from surgray.io.frame_folder import list_frame_files

    frames = sample.frames
    if isinstance(frames, VideoFileFrames):
        if tuple(frames.frame_indices) != tuple(range(len(frames.frame_indices))):
            raise DatasetError(
                f"{sample.video_id}: only videos annotated from their first frame on, every "
                "frame, can be evaluated (the sample picks frames of the file)"
            )
        return frames.uri
    if not isinstance(frames, ImageFrames):
        raise DatasetError(
            f"{sample.video_id}: frames of type {type(frames).__name__} not supported"
        )
    if frames.crop is not None:
        raise DatasetError(
            f"{sample.video_id}: the reader crops its frames ({frames.crop}); the pipeline reads "
            "frames as they are, so convert the dataset to a DAVIS-style folder first"
        )
    folder = posixpath.dirname(frames.uris[0])
    if any(posixpath.dirname(u) != folder for u in frames.uris):
        raise DatasetError(f"{sample.video_id}: frames are spread over several folders")
    _, listed = list_frame_files(folder, storage=sample.storage)
    names = [posixpath.basename(n) for n in listed]
    if names != [posixpath.basename(u) for u in frames.uris]:
        raise DatasetError(
            f"{folder}: the folder holds other images besides the video's {len(frames.uris)} frames"
        )
    return folder


def first_appearances(sample: VideoSample) -> list[FirstAppearance]:
    """Each object's first annotated frame where its ground-truth mask is not empty."""
    found: dict[int, FirstAppearance] = {}
    for index in sample.annotated_frames:
        labels = sample.load_mask(index)
        for obj_id in np.unique(labels):
            obj_id = int(obj_id)
            if obj_id != 0 and obj_id not in found:
                found[obj_id] = FirstAppearance(obj_id, index, labels == obj_id)
    return [found[k] for k in sorted(found)]


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    # Pixel edges, so a one-pixel-wide object still has x0 < x1.
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _prompt(appearance: FirstAppearance, kind: PromptKind, label: str | None) -> ObjectPrompt:
    from surgray.io.masks import encode_rle

    if kind == "mask":
        rle = encode_rle(appearance.mask[None])[0]
        mask = MaskRle((rle["size"][0], rle["size"][1]), rle["counts"])
        return ObjectPrompt(appearance.obj_id, appearance.frame, label, mask_rle=mask)
    return ObjectPrompt(appearance.obj_id, appearance.frame, label, box=_box(appearance.mask))


def _click(appearance: FirstAppearance, num_clicks: int, label: str | None) -> ClickTarget:
    from surgray.io.masks import encode_rle

    rle = dict(encode_rle(appearance.mask[None])[0])
    return ClickTarget(appearance.obj_id, appearance.frame, num_clicks, rle, label)


def eval_items(
    sample: VideoSample, kind: PromptKind, num_clicks: int = 1, passes: Passes = "joint"
) -> list[EvalItem]:
    """The work of one dataset video under a protocol (empty when no object ever appears)."""
    if kind not in ("mask", "box", "clicks"):
        raise ValueError(f"unknown prompt kind {kind!r}; use mask, box or clicks")
    if passes not in ("joint", "per_object"):
        raise ValueError(f"unknown passes {passes!r}; use joint or per_object")
    uri = video_source(sample)
    labels = {o.obj_id: o.source_name or o.category for o in sample.objects}
    appearances = first_appearances(sample)
    groups = [appearances] if passes == "joint" else [[a] for a in appearances]
    items = []
    for group in groups:
        if not group:
            continue
        ident = work_id(sample.video_id, group[0].obj_id if passes == "per_object" else None)
        if kind == "clicks":
            prompts, clicks = (), tuple(_click(a, num_clicks, labels.get(a.obj_id)) for a in group)
        else:
            prompts, clicks = tuple(_prompt(a, kind, labels.get(a.obj_id)) for a in group), ()
        task = VideoTask(uri, ident, VideoPrompts(objects=prompts))
        items.append(
            EvalItem(
                sample.video_id,
                task,
                clicks,
                tuple(a.obj_id for a in group),
                sample.num_frames,
            )
        )
    return items
