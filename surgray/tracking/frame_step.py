"""Running the objects of one frame through the model and recording what they leave behind.

`plan_frame` decides, per object, what a step does on a frame (SAM2's video predictor rules):
a prompt waiting for the frame runs with it; a frame the object was prompted on in an earlier
pass keeps that output; an object with memories is tracked; an object whose first prompt is
still ahead is skipped. `run_jobs` runs every object that needs the model in ONE
`SAM2Model.track_frame` call (memory attention and decoder batched over objects; the model
groups objects whose memory counts or prompt layouts differ) and one batched memory-encoder
call, then stores the memories in each object's policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from surgray.model.sam2.frame_types import FrameFeatures, FrameOutput
from surgray.model.sam2.memory_types import MemoryEntry
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.postprocess import clean_mask_logits
from surgray.tracking.state import FramePrompt, ObjectOutput, ObjectState, OutputKind


@dataclass
class ObjectJob:
    """One object to run on a frame."""

    obj: ObjectState
    kind: OutputKind
    prompt: FramePrompt | None = None
    conditioning: bool = False  # the memory is a conditioning one (kept for good)


@dataclass(frozen=True)
class StepSettings:
    """What `run_jobs` needs besides the model and the jobs."""

    hole_area: int
    sprinkle_area: int
    storage_device: torch.device
    num_frames: int | None
    reverse: bool


TrackFn = Callable[..., FrameOutput]


def prompt_kind(
    obj: ObjectState, frame_idx: int, correction_is_conditioning: bool
) -> tuple[OutputKind, bool]:
    """(kind, conditioning) of a prompt for `obj` on `frame_idx`.

    A frame the object was prompted on is refined the way it was made; a frame it was tracked
    on gets a correction (with memory; conditioning only when the tracker makes every
    corrected frame one, SAM2's `add_all_frames_to_correct_as_cond`); any other frame is a new
    initial frame (no memory), as in SAM2.
    """
    if frame_idx in obj.cond_outputs:
        return obj.cond_outputs[frame_idx].kind, True
    if frame_idx in obj.tracked:
        return "correction", correction_is_conditioning
    return "init", True


def plan_frame(
    objects: list[ObjectState], frame_idx: int, correction_is_conditioning: bool
) -> tuple[list[ObjectJob], list[ObjectState]]:
    """(objects to run, objects that reuse their conditioning output) for a step."""
    jobs: list[ObjectJob] = []
    reused: list[ObjectState] = []
    for obj in objects:
        pending = obj.pending_prompt(frame_idx)
        if pending is not None:
            kind, conditioning = prompt_kind(obj, frame_idx, correction_is_conditioning)
            jobs.append(ObjectJob(obj, kind, pending, conditioning))
        elif frame_idx in obj.cond_outputs:
            reused.append(obj)
        elif obj.started:
            jobs.append(ObjectJob(obj, "tracked"))
    return jobs, reused


def _selection(job: ObjectJob, frame_idx: int, reverse: bool):
    if job.kind == "init":
        return None
    return job.obj.policy.select(frame_idx, reverse)


def _prev_logits(job: ObjectJob, frame_idx: int) -> torch.Tensor | None:
    """Earlier logits of the object on this frame, fed back with new clicks (as SAM2 does)."""
    output = job.obj.output_on(frame_idx)
    return output.low_res_logits if output is not None else None


def run_jobs(
    model: SAM2Model,
    track: TrackFn,
    features: FrameFeatures,
    frame_idx: int,
    jobs: list[ObjectJob],
    settings: StepSettings,
) -> None:
    """Run `jobs` on one frame and store outputs and memories in their objects."""
    if not jobs:
        return
    selections = [_selection(job, frame_idx, settings.reverse) for job in jobs]
    prompts = [
        job.prompt.to_prompt(_prev_logits(job, frame_idx)) if job.prompt is not None else None
        for job in jobs
    ]
    out = track(
        features,
        selections,
        frame_idx,
        prompts,
        num_frames=settings.num_frames,
        is_conditioning=[job.conditioning for job in jobs],
        run_memory_encoder=False,
    )
    raw = out.low_res_masks.float()
    cleaned = clean_mask_logits(raw, settings.hole_area, settings.sprinkle_area)
    from_prompts = torch.tensor([job.prompt is not None for job in jobs], device=raw.device)
    memory = None
    if model.cfg.memory.num_maskmem > 0:
        # Prompted frames remember the cleaned mask the user saw (the reference encodes them
        # from its stored, hole-filled logits); tracked frames remember the raw prediction.
        mask_in = torch.where(from_prompts[:, None, None, None], cleaned, raw)
        memory = model.encode_memory(features, mask_in, out.object_score_logits, from_prompts)
    for i, job in enumerate(jobs):
        score = float(out.object_score_logits[i])
        iou = float(out.predicted_iou[i])
        output = ObjectOutput(frame_idx, cleaned[i].clone(), score, iou, job.kind)
        if memory is not None:
            job.obj.policy.add(
                _entry(job, i, out, memory, features, score, iou, frame_idx, settings)
            )
        job.obj.last = output
        if job.conditioning:
            job.obj.cond_outputs[frame_idx] = output
        if job.prompt is not None:
            job.prompt.mark_consumed()


def _wants_image_features(obj: ObjectState) -> bool:
    # SAM2S DiveMem compares frames by their image-encoder features; other policies do not.
    return getattr(getattr(obj.policy, "cfg", None), "name", None) == "divemem"


def _entry(
    job: ObjectJob,
    row: int,
    out: FrameOutput,
    memory: torch.Tensor,
    features: FrameFeatures,
    score: float,
    iou: float,
    frame_idx: int,
    settings: StepSettings,
) -> MemoryEntry:
    # Copies, so a policy never pins the whole batch behind a view (nbytes stays honest).
    device = settings.storage_device
    image_features = None
    if _wants_image_features(job.obj):
        image_features = features.image_embed[0].to(device, copy=True)
    return MemoryEntry(
        frame_idx=frame_idx,
        features=memory[row].to(device, copy=True),
        obj_ptr=out.obj_ptr[row].to(device, copy=True),
        is_conditioning=job.conditioning,
        predicted_iou=iou,
        object_score=score,
        image_features=image_features,
    )
