"""Text objects on tracked frames of a ReSurgSAM2: the decoder also gets their text token.

The released ReSurgSAM2 (`forward_text_emb`) gives the decoder, on every frame, the projected
text embedding (`language_fusion_mlp(token_projection(pooled text))`) as a sparse prompt token
after the padding click; on stage-1 frames the fused class token follows it. A model with
`ReferringConfig.tracked_text_token` does the same on tracked frames: the tracker hands such
objects' memories over as a `TextMemorySelection` (memories + token), and
`ReSurgSAM2.track_frame` runs those objects here, the others through `SAM2Model.track_frame`,
then puts the rows back in object order (`merge_frame_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from surgray.model.sam2.frame_types import FrameFeatures, FrameOutput, ObjectPrompt
from surgray.model.sam2.memory_types import MemorySelection
from surgray.model.sam2.network import SAM2Model


@dataclass
class TextMemorySelection(MemorySelection):
    """The memories of a text object plus its decoder text token ([T, C]), which
    `ReSurgSAM2.track_frame` adds to the decoder's sparse prompts (`tracked_text_token`)."""

    decoder_tokens: torch.Tensor | None = None


def merge_frame_outputs(
    parts: list[tuple[list[int], FrameOutput]], count: int, frame_idx: int
) -> FrameOutput:
    """One `FrameOutput` in object order from outputs of disjoint sets of rows."""

    def gather(name: str) -> torch.Tensor | None:
        first = getattr(parts[0][1], name)
        if first is None or any(getattr(out, name) is None for _, out in parts):
            return None
        merged = first.new_empty((count, *first.shape[1:]))
        for rows, out in parts:
            merged[rows] = getattr(out, name).to(merged.dtype)
        return merged

    ious: list[torch.Tensor] = [torch.empty(0)] * count
    flags = [False] * count
    for rows, out in parts:
        for j, row in enumerate(rows):
            ious[row] = out.multimask_iou[j]
            flags[row] = out.is_conditioning[j]
    return FrameOutput(
        frame_idx=frame_idx,
        low_res_masks=gather("low_res_masks"),
        high_res_masks=gather("high_res_masks"),
        predicted_iou=gather("predicted_iou"),
        object_score_logits=gather("object_score_logits"),
        obj_ptr=gather("obj_ptr"),
        memory_features=gather("memory_features"),
        multimask_iou=ious,
        is_conditioning=flags,
    )


def track_with_text_tokens(
    model: SAM2Model,  # a ReSurgSAM2: only its SAM2 parts are used here
    features: FrameFeatures,
    selections: Sequence[MemorySelection | None],
    rows: list[int],
    frame_idx: int,
    args: tuple,
) -> FrameOutput:
    """`track_frame` for the `rows` of `selections` that are `TextMemorySelection`s: memory
    attention, the decoder with each object's text token after the padding click, and the
    memory encoder, as for any tracked frame. args: (num_frames, multimask, is_conditioning,
    run_memory_encoder) of the `track_frame` call."""
    num_frames, multimask, is_conditioning, run_memory_encoder = args
    index = torch.tensor(rows, device=features.image_embed.device)
    feats = features.expand(len(selections))
    image = feats.image_embed.index_select(0, index)
    pos = feats.image_pos.index_select(0, index)
    high_res = [t.index_select(0, index) for t in feats.high_res]
    chosen = [selections[i] for i in rows]
    fused = model.memory_readout.condition(image, pos, list(chosen), num_frames)
    sam_heads = model.sam_heads
    if multimask is None:
        multimask = sam_heads.wants_multimask(has_memory=True, num_clicks=0)
    tokens = torch.stack([sel.decoder_tokens for sel in chosen]).to(fused.device)
    heads = sam_heads.run(fused, high_res, None, None, multimask, tokens)
    memory = None
    if run_memory_encoder and model.cfg.memory.num_maskmem > 0:
        from_prompts = torch.zeros(len(rows), dtype=torch.bool, device=image.device)
        memory = model.memory_writer.encode(
            image, heads.high_res_masks, heads.object_score_logits, from_prompts, model.training
        )
    flags = [False] * len(rows)
    if is_conditioning is not None:
        flags = [is_conditioning[i] for i in rows]
    return FrameOutput(
        frame_idx=frame_idx,
        low_res_masks=heads.low_res_masks,
        high_res_masks=heads.high_res_masks,
        predicted_iou=heads.predicted_iou,
        object_score_logits=heads.object_score_logits.reshape(-1),
        obj_ptr=heads.obj_ptr,
        memory_features=memory,
        multimask_iou=list(heads.multimask_iou.unbind(0)),
        is_conditioning=flags,
    )


def track_frame_with_text(
    model: SAM2Model,
    plain_track: Callable[..., FrameOutput],
    features: FrameFeatures,
    selections: Sequence[MemorySelection | None],
    frame_idx: int,
    prompts: Sequence[ObjectPrompt | None] | None,
    args: tuple,
) -> FrameOutput:
    """`ReSurgSAM2.track_frame`: objects whose selection is a `TextMemorySelection` and that
    have no prompt on the frame run with their text token (`track_with_text_tokens`), the
    others through `plain_track` (`SAM2Model.track_frame`); rows come back in object order.
    args: (num_frames, multimask, is_conditioning, run_memory_encoder)."""
    prompt_list = list(prompts) if prompts is not None else [None] * len(selections)
    texted = [
        i
        for i, (sel, prompt) in enumerate(zip(selections, prompt_list))
        if isinstance(sel, TextMemorySelection) and prompt is None
    ]
    num_frames, multimask, is_conditioning, run_memory_encoder = args
    if not texted:
        return plain_track(features, selections, frame_idx, prompt_list, *args)
    others = [i for i in range(len(selections)) if i not in set(texted)]
    parts = [(texted, track_with_text_tokens(model, features, selections, texted, frame_idx, args))]
    if others:
        rows = torch.tensor(others, device=features.image_embed.device)
        sub = features.expand(len(selections))
        sub = FrameFeatures(
            sub.image_embed.index_select(0, rows),
            sub.image_pos.index_select(0, rows),
            [t.index_select(0, rows) for t in sub.high_res],
        )
        flags = None if is_conditioning is None else [is_conditioning[i] for i in others]
        out = plain_track(
            sub,
            [selections[i] for i in others],
            frame_idx,
            [prompt_list[i] for i in others],
            num_frames,
            multimask,
            flags,
            run_memory_encoder,
        )
        parts.append((others, out))
    return merge_frame_outputs(parts, len(selections), frame_idx)
