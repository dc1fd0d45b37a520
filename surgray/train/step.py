"""One training clip through the SAM2 network, as SAM2's training forward does it.

`run_clip` follows `SAM2Train.forward_tracking` / `track_step` of facebookresearch/sam2:

1. All frames go through the image encoder at once.
2. The prompt plan (`prompts.plan_clip_prompts`) names the initial conditioning frames, which
   are processed first and without memory: the ground-truth mask is taken as the output
   (`use_mask_input_as_output_without_sam`), or one click / a noisy box is decoded.
3. The other frames follow in clip order, each conditioned on the memories its objects hold
   (`clip_memory.ClipMemory`: SAM2's selection, plus long-term frames for DiveMem clips).
4. On frames to correct, correction clicks are sampled one at a time from the error of the
   current mask (`prompts.correction_click`) and decoded again with all clicks so far and
   the previous low-resolution logits as the mask prompt; the memory-conditioned features
   are computed once per frame. Every decoder pass is a `DecoderStep` of the loss.
5. The final mask of each frame is encoded into memory (sigmoid masks in training mode,
   graph kept), as a conditioning memory when the plan says so.

ReSurgSAM2 referring clips replace step 2 by a referring stage (text + CSTMamba, see
`ReferringStage`) on the context and anchor frames; the anchor's output becomes the
conditioning memory, and the frames after it are tracked. Every frame is supervised.

SAM2S TSL (models with a semantic head and category names, `LossConfig.tsl > 0`): every
memory-conditioned frame also gets the semantic head's embedding of each object
(`surgray.train.semantic`), scored against the category-name embeddings by `SAM2Loss`.
Referring models with category probes add their losses on the stage-1 frames of referring
clips (`surgray.train.grounding`).

A frozen image encoder runs without autograd (no activations kept for a backward pass).

The pieces used are the model's own parts (`sam_heads.run`, `sam_heads.mask_as_output`,
`memory_readout`, `memory_writer`); `SAM2Model.track_frame` is the inference-side wrapper of
the same pieces, but it keeps only the chosen candidate mask, while the loss needs every
candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from surgray.model.sam2.frame_types import FrameFeatures, HeadsOutput
from surgray.model.sam2.memory_types import MemoryEntry
from surgray.train.clicks import Clicks
from surgray.train.clip_data import TrainingClip
from surgray.train.clip_memory import ClipMemory
from surgray.train.grounding import grounding_enabled, grounding_loss
from surgray.train.losses import DecoderStep, FramePrediction, FrameTarget, LossBreakdown, SAM2Loss
from surgray.train.prompts import (
    ClipPromptPlan,
    PromptSimConfig,
    correction_click,
    initial_prompt,
    plan_clip_prompts,
)
from surgray.train.semantic import SemanticSupervision, category_embeddings, tsl_enabled

if TYPE_CHECKING:
    from surgray.model.sam2.network import SAM2Model


class ReferringStage(Protocol):
    """Text-referred masks on frames without memory (ReSurgSAM2's stage 1).

    Called with the model, the features of the context frames then the anchor frame (batch 1
    each) and one expression per object; returns one `HeadsOutput` per frame for the N objects.
    """

    def __call__(
        self, model: SAM2Model, frames: list[FrameFeatures], expressions: list[str]
    ) -> list[HeadsOutput]: ...


@dataclass
class ClipOutput:
    loss: LossBreakdown
    predictions: list[FramePrediction]  # in clip order
    final_masks: torch.Tensor  # [T, N, S, S] bool, the kept mask of each frame (detached)
    plan: ClipPromptPlan | None  # None for referring clips
    decoder_passes: int


def _click_tuple(clicks: Clicks | None, device: torch.device):
    if clicks is None:
        return None
    return clicks.coords.to(device), clicks.labels.to(device)


def encode_clip(model: SAM2Model, images: torch.Tensor) -> list[FrameFeatures]:
    """`model.encode_frames`, with the image encoder under no_grad when none of its parameters
    trains (the decoder's high-resolution projections still get their gradients)."""
    if any(p.requires_grad for p in model.image_encoder.parameters()):
        return model.encode_frames(images)
    with torch.no_grad():
        out = model.image_encoder(images)
    out = model.project_high_res(out)
    return [model.frame_features(out, k) for k in range(images.shape[0])]


class _ClipRun:
    """State of one clip while it is processed (features, memories, outputs)."""

    def __init__(
        self,
        model: SAM2Model,
        clip: TrainingClip,
        prompts: PromptSimConfig,
        generator,
        tsl: bool = False,
    ):
        self.model = model
        self.clip = clip
        self.prompts = prompts
        self.generator = generator
        self.count = clip.num_objects
        self.features = encode_clip(model, clip.images)
        self.memory = ClipMemory(model.cfg, self.count, clip.num_frames)
        self.predictions: dict[int, FramePrediction] = {}
        self.final: dict[int, torch.Tensor] = {}
        self.stage1: tuple[list[int], list[HeadsOutput]] = ([], [])  # referring clips
        self.semantic = SemanticSupervision(model) if tsl else None

    def fused(self, t: int, feats: FrameFeatures, with_memory: bool) -> torch.Tensor:
        selections = self.memory.select(t) if with_memory else [None] * self.count
        if with_memory and self.semantic is not None:
            self.semantic.observe(t, feats, selections)
        return self.model.memory_readout.condition(
            feats.image_embed, feats.image_pos, selections, self.clip.num_frames
        )

    def decode(
        self,
        fused: torch.Tensor,
        feats: FrameFeatures,
        clicks: Clicks | None,
        mask_prompt: torch.Tensor | None,
        has_memory: bool,
    ) -> HeadsOutput:
        num_clicks = 0 if clicks is None else clicks.num_clicks
        sam_heads = self.model.sam_heads
        multimask = sam_heads.wants_multimask(has_memory, num_clicks)
        return sam_heads.run(
            fused,
            feats.high_res,
            _click_tuple(clicks, fused.device),
            mask_prompt,
            multimask,
        )

    def frame(self, t: int, plan: ClipPromptPlan) -> None:
        """Steps 2-5 of the module docstring for clip position t."""
        model, gt = self.model, self.clip.masks[t]
        feats = self.features[t].expand(self.count)
        is_init = t in plan.init_cond_frames
        clicks: Clicks | None = None
        fused = None
        if is_init and not plan.use_point_input:
            masks = gt[:, None].float()
            if model.cfg.memory.use_mask_input_as_output_without_sam:
                heads = model.sam_heads.mask_as_output(feats.image_embed, feats.high_res, masks)
            else:
                fused = self.fused(t, feats, with_memory=False)
                heads = self.decode(fused, feats, None, masks, has_memory=False)
        else:
            fused = self.fused(t, feats, with_memory=not is_init)
            if is_init:
                clicks = initial_prompt(gt, True, self.prompts, self.generator).clicks
            heads = self.decode(fused, feats, clicks, None, has_memory=not is_init)
        steps = [DecoderStep.from_heads(heads)]
        if t in plan.frames_to_correct and fused is not None:
            for _ in range(self.prompts.num_correction_clicks):
                new = correction_click(
                    gt, heads.high_res_masks.detach(), self.prompts, self.generator
                )
                clicks = new if clicks is None else clicks.then(new)
                heads = self.decode(fused, feats, clicks, heads.low_res_masks, not is_init)
                steps.append(DecoderStep.from_heads(heads))
        self.finish(t, feats, heads, steps, prompted=is_init or clicks is not None,
                    conditioning=plan.is_conditioning(t))  # fmt: skip

    def finish(
        self,
        t: int,
        feats: FrameFeatures,
        heads: HeadsOutput,
        steps: list[DecoderStep],
        prompted: bool,
        conditioning: bool,
    ) -> None:
        semantic = self.semantic.embedding(t) if self.semantic is not None else None
        self.predictions[t] = FramePrediction(steps, semantic_embedding=semantic)
        self.final[t] = (heads.high_res_masks[:, 0] > 0).detach()
        model = self.model
        if model.cfg.memory.num_maskmem == 0:
            return
        flags = torch.full(
            (self.count,), prompted, dtype=torch.bool, device=feats.image_embed.device
        )
        memory = model.memory_writer.encode(
            feats.image_embed,
            heads.high_res_masks,
            heads.object_score_logits,
            flags,
            model.training,
        )
        ious = heads.predicted_iou.detach().float().cpu().tolist()
        scores = heads.object_score_logits.detach().float().reshape(-1).cpu().tolist()
        entries = [
            MemoryEntry(t, memory[i], heads.obj_ptr[i], conditioning, ious[i], scores[i])
            for i in range(self.count)
        ]
        self.memory.add(entries, long_term=t in self.clip.long_term)

    def referring(self, stage: ReferringStage) -> None:
        staged = list(self.clip.context) + [self.clip.anchor]
        outputs = stage(self.model, [self.features[p] for p in staged], list(self.clip.expressions))
        if len(outputs) != len(staged):
            raise ValueError(
                f"the referring stage returned {len(outputs)} outputs for {len(staged)} frames"
            )
        self.stage1 = (staged, outputs)
        for p, heads in zip(staged, outputs):
            steps = [DecoderStep.from_heads(heads)]
            if p == self.clip.anchor:
                feats = self.features[p].expand(self.count)
                self.finish(p, feats, heads, steps, prompted=True, conditioning=True)
            else:
                self.predictions[p] = FramePrediction(steps)
                self.final[p] = (heads.high_res_masks[:, 0] > 0).detach()
        for t in range(self.clip.anchor + 1, self.clip.num_frames):
            feats = self.features[t].expand(self.count)
            heads = self.decode(self.fused(t, feats, True), feats, None, None, has_memory=True)
            self.finish(t, feats, heads, [DecoderStep.from_heads(heads)], False, False)


def run_clip(
    model: SAM2Model,
    clip: TrainingClip,
    prompts: PromptSimConfig,
    loss_fn: SAM2Loss,
    generator: torch.Generator,
    num_objects: float | None = None,
    referring: ReferringStage | None = None,
) -> ClipOutput:
    """Forward one clip and its loss (see the module docstring).

    `num_objects` is the loss normaliser (`losses.average_object_count` under DDP); by default
    each frame's own object count. `generator` drives prompt simulation.
    """
    if clip.num_objects == 0:
        raise ValueError(f"clip of {clip.video_id!r} has no object to train on")
    run = _ClipRun(model, clip, prompts, generator, tsl_enabled(model, loss_fn.config))
    plan = None
    if clip.kind == "referring":
        if referring is None:
            raise ValueError(
                "referring clips need a referring stage (text encoder + CSTMamba); set "
                "sampling.referring_fraction to 0 or train a model that has one"
            )
        run.referring(referring)
    else:
        plan = plan_clip_prompts(clip.num_frames, prompts, generator)
        for t in plan.processing_order:
            run.frame(t, plan)
    order = range(clip.num_frames)
    predictions = [run.predictions[t] for t in order]
    categories = text = None
    if run.semantic is not None and run.semantic.active:
        categories = clip.category_ids(model.referring_cfg.categories)
        text = category_embeddings(model, loss_fn.config)
    targets = [FrameTarget(masks=clip.masks[t], category_ids=categories) for t in order]
    loss = loss_fn(predictions, targets, text_embeddings=text, num_objects=num_objects)
    if clip.kind == "referring" and grounding_enabled(model, loss_fn.config):
        staged, stage1 = run.stage1
        embeds = [run.features[p].image_embed for p in staged]
        loss = loss + grounding_loss(model, loss_fn.config, clip, staged, stage1, embeds)
    return ClipOutput(
        loss=loss,
        predictions=predictions,
        final_masks=torch.stack([run.final[t] for t in order]),
        plan=plan,
        decoder_passes=sum(len(p.steps) for p in predictions),
    )


class ClipTrainer(nn.Module):
    """The model and its loss as one module whose `forward` runs a clip, so DDP sees every
    parameter use inside `forward` (SAM2Model itself has no single forward). `referring` is
    the stage used for referring clips (ReSurgSAM2: `surgray.model.referring.resurgsam2.referring_stage`);
    it runs inside `forward`, on the wrapped model, so DDP reduces its gradients too."""

    def __init__(
        self,
        model: SAM2Model,
        prompts: PromptSimConfig,
        loss_fn: SAM2Loss,
        referring: ReferringStage | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.prompts = prompts
        self.referring = referring

    def forward(
        self,
        clip: TrainingClip,
        generator: torch.Generator,
        num_objects: float | None = None,
        referring: ReferringStage | None = None,
    ) -> ClipOutput:
        stage = referring if referring is not None else self.referring
        out = run_clip(self.model, clip, self.prompts, self.loss_fn, generator, num_objects, stage)
        if torch.is_grad_enabled() and not out.loss.total.requires_grad:
            # No trained parameter met this clip (e.g. an image clip when only new modules
            # train): a zero that reaches them keeps backward and DDP's reduction working.
            trained = [p for p in self.parameters() if p.requires_grad]
            if trained:
                zero = sum(p.sum() for p in trained) * 0.0
                out.loss.total = out.loss.total + zero
        return out
