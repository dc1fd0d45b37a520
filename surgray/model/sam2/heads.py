"""SAM heads: prompts + (memory-conditioned) features -> masks, IoU, object score, pointer.

`SamHeads` is this part of the network: the prompt encoder, the mask decoder, the mask
prompt's downsampler and the object-pointer head, and nothing else of the model
(`SAM2Model.sam_heads` hands one out). `SamHeads.run` is the decoder path for a batch of
objects that share one prompt layout; `SamHeads.mask_as_output` is the path for mask prompts
when `use_mask_input_as_output_without_sam` is set (the mask is taken as the answer, and the
decoder only makes the pointer); `SamHeads.for_objects` splits the objects of a frame into
such batches (objects with different click counts or multimask decisions cannot share a
decoder pass without changing its result) and puts the answers back in object order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.frame_types import HeadsOutput, ObjectPrompt
from surgray.model.sam2.mask_decoder import MaskDecoder
from surgray.model.sam2.object_pointer import ObjectPointerHead
from surgray.model.sam2.prompt_encoder import PromptEncoder

# Mask logit written where the object is judged absent (the reference's placeholder).
NO_OBJECT_LOGIT = -1024.0
# Logits standing for a given binary mask: sigmoid(+-10) is within 5e-5 of 1 / 0.
MASK_PROMPT_SCALE, MASK_PROMPT_BIAS = 20.0, -10.0
# Earlier logits fed back with correction clicks are clamped, as the reference predictor does.
PREV_LOGITS_CLAMP = 32.0


def _resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


def prompt_mask_at_input_size(mask: torch.Tensor, image_size: int) -> torch.Tensor:
    """[H, W] binary mask -> [1, 1, S, S] float in {0, 1} (resized masks are re-thresholded)."""
    mask = mask[None, None].float()
    if tuple(mask.shape[-2:]) == (image_size, image_size):
        return mask
    resized = F.interpolate(
        mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return (resized >= 0.5).float()


@dataclass
class ObjectHeadsResult:
    """The kept outputs of every object of a frame, in object order."""

    low_res_masks: torch.Tensor  # [B, 1, 4h, 4w]
    high_res_masks: torch.Tensor  # [B, 1, S, S]
    predicted_iou: torch.Tensor  # [B]
    obj_ptr: torch.Tensor  # [B, C]
    object_score_logits: torch.Tensor  # [B, 1]
    multimask_iou: list[torch.Tensor]  # per object [M]


@dataclass(frozen=True)
class SamHeads:
    """The prompt-to-mask part of SAM2 (see the module docstring)."""

    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder
    # Brings a full-size mask prompt to the decoder's 4x mask size (None without pointers).
    mask_downsample: nn.Module | None
    pointer: ObjectPointerHead
    cfg: ModelConfig

    def run(
        self,
        image_embed: torch.Tensor,
        high_res: list[torch.Tensor],
        clicks: tuple[torch.Tensor, torch.Tensor] | None,
        mask_prompt: torch.Tensor | None,
        multimask: bool,
        extra_tokens: torch.Tensor | None = None,
        mask_bias: torch.Tensor | None = None,
    ) -> HeadsOutput:
        """Prompt encoder + mask decoder + pointer for B objects with the same prompt layout.

        clicks: ([B, P, 2] model-input pixels, [B, P] labels incl. 2/3 for box corners) or
        None. mask_prompt: [B, 1, H, W] logits (resized to the prompt encoder's mask size) or
        None. extra_tokens: [B, T, C] sparse prompt tokens appended after the clicks'
        (ReSurgSAM2's fused class token and text embedding), or None.
        mask_bias: [B, 1, h, w] logits added to every candidate low-res mask before the
        object-score decision (the referring model's text-pixel head,
        `surgray.model.referring.text_pixel`), or None.
        """
        batch = image_embed.shape[0]
        device = image_embed.device
        if clicks is None:
            # A single padding click: the decoder was trained to see at least one sparse token.
            clicks = (
                torch.zeros(batch, 1, 2, device=device),
                -torch.ones(batch, 1, dtype=torch.int32, device=device),
            )
        encoder = self.prompt_encoder
        if mask_prompt is not None:
            mask_prompt = _resize_antialiased(mask_prompt, encoder.mask_input_size)
        sparse, dense = encoder(points=clicks, boxes=None, masks=mask_prompt)
        if extra_tokens is not None:
            sparse = torch.cat([sparse, extra_tokens.to(sparse.dtype)], dim=1)
        decoded = self.mask_decoder(
            image_embeddings=image_embed,
            image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res or None,
        )
        low_res = decoded.masks
        if mask_bias is not None:
            low_res = low_res + mask_bias.to(low_res.dtype)
        scores = decoded.object_score_logits
        if self.cfg.mask_decoder.pred_obj_scores:
            # Masks are a hard present/absent decision, consistent with the pointer below.
            low_res = torch.where((scores > 0)[:, :, None, None], low_res, NO_OBJECT_LOGIT)
        low_res = low_res.float()
        size = self.cfg.image_size
        high_res_masks = F.interpolate(
            low_res, size=(size, size), mode="bilinear", align_corners=False
        )
        ious = decoded.iou_pred
        tokens = decoded.sam_tokens
        rows = torch.arange(batch, device=device)
        if multimask:
            best = ious.argmax(dim=-1)
            kept_low, kept_high = low_res[rows, best, None], high_res_masks[rows, best, None]
            kept_iou = ious[rows, best]
            token = tokens[rows, best] if tokens.shape[1] > 1 else tokens[:, 0]
        else:
            kept_low, kept_high, kept_iou = low_res, high_res_masks, ious[:, 0]
            token = tokens[:, 0]
        return HeadsOutput(
            low_res_multimasks=low_res,
            high_res_multimasks=high_res_masks,
            multimask_iou=ious,
            low_res_masks=kept_low,
            high_res_masks=kept_high,
            predicted_iou=kept_iou,
            obj_ptr=self.pointer.from_token(token, scores),
            object_score_logits=scores,
        )

    def mask_as_output(
        self, image_embed: torch.Tensor, high_res: list[torch.Tensor], masks: torch.Tensor
    ) -> HeadsOutput:
        """Take binary masks [B, 1, S, S] as the prediction; the decoder only makes a pointer.

        `image_embed` is the frame's raw features (no memory): the reference does the same.
        """
        binary = masks.float()
        high = binary * MASK_PROMPT_SCALE + MASK_PROMPT_BIAS
        low = F.interpolate(
            high,
            size=(high.shape[-2] // 4, high.shape[-1] // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        batch = masks.shape[0]
        ious = binary.new_ones(batch, 1)
        if self.cfg.object_pointer.use_obj_ptrs_in_encoder:
            prompt = self.mask_downsample(binary)
            pointer = self.run(image_embed, high_res, None, prompt, False).obj_ptr
        else:
            pointer = binary.new_zeros(batch, self.cfg.hidden_dim)
        # Presence follows the given mask, not the decoder's opinion.
        presence = (binary.flatten(1) > 0).any(dim=1, keepdim=True).float()
        scores = MASK_PROMPT_SCALE * presence + MASK_PROMPT_BIAS
        return HeadsOutput(
            low_res_multimasks=low,
            high_res_multimasks=high,
            multimask_iou=ious,
            low_res_masks=low,
            high_res_masks=high,
            predicted_iou=ious[:, 0],
            obj_ptr=self.pointer.with_presence(pointer, presence),
            object_score_logits=scores,
        )

    def wants_multimask(self, has_memory: bool, num_clicks: int) -> bool:
        """SAM2's rule: several candidate masks for few clicks on initial frames (and, when
        configured, while tracking), the best kept by predicted IoU."""
        rules = self.cfg.prompting
        return (
            rules.multimask_output_in_sam
            and (not has_memory or rules.multimask_output_for_tracking)
            and rules.multimask_min_pt_num <= num_clicks <= rules.multimask_max_pt_num
        )

    def for_objects(
        self,
        raw_embed: torch.Tensor,
        fused_embed: torch.Tensor,
        high_res: list[torch.Tensor],
        prompts: list[ObjectPrompt | None],
        multimask: list[bool],
    ) -> ObjectHeadsResult:
        """Heads for the B objects of one frame.

        raw_embed: [B, C, h, w] features without memory (used by the mask-as-output path);
        fused_embed: [B, C, h, w] memory-conditioned features; high_res: per-level [B, ...].
        """
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            groups[self._group_key(prompt, multimask[i])].append(i)
        size = self.cfg.image_size
        results: list[tuple[list[int], HeadsOutput]] = []
        for key, rows in groups.items():
            index = None
            if len(rows) != len(prompts):
                index = torch.tensor(rows, device=raw_embed.device)
            level_rows = [_rows(t, index) for t in high_res]
            group_prompts = [prompts[i] for i in rows]
            if key[0] == "mask_as_output":
                masks = torch.cat(
                    [prompt_mask_at_input_size(p.mask, size) for p in group_prompts]
                ).to(raw_embed.device)
                out = self.mask_as_output(_rows(raw_embed, index), level_rows, masks)
            else:
                clicks = _stack_clicks(group_prompts, raw_embed.device)
                mask_prompt = _stack_dense_prompts(group_prompts, size, raw_embed.device)
                fused = _rows(fused_embed, index)
                out = self.run(fused, level_rows, clicks, mask_prompt, key[1])
            results.append((rows, out))
        return _merge(results, len(prompts))

    def _group_key(self, prompt: ObjectPrompt | None, multimask: bool) -> tuple:
        if prompt is not None and prompt.mask is not None:
            if self.cfg.memory.use_mask_input_as_output_without_sam:
                return ("mask_as_output",)
            return ("sam", multimask, 0, "mask")
        clicks = 0 if prompt is None else prompt.num_clicks
        has_prev = prompt is not None and prompt.prev_mask_logits is not None
        return ("sam", multimask, clicks, "prev" if has_prev else "")


def _rows(t: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Some objects' rows (None: every object, in order: no copy)."""
    return t if index is None else t.index_select(0, index)


def _stack_clicks(
    prompts: list[ObjectPrompt | None], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    clicks = [p.clicks() if p is not None else None for p in prompts]
    if clicks[0] is None:
        return None
    coords = torch.stack([c for c, _ in clicks]).to(device)
    labels = torch.stack([lab for _, lab in clicks]).to(device)
    return coords, labels


def _stack_dense_prompts(
    prompts: list[ObjectPrompt | None], image_size: int, device: torch.device
) -> torch.Tensor | None:
    first = prompts[0]
    if first is None:
        return None
    if first.mask is not None:  # only without use_mask_input_as_output_without_sam
        return torch.cat([prompt_mask_at_input_size(p.mask, image_size) for p in prompts]).to(
            device
        )
    if first.prev_mask_logits is not None:
        logits = torch.stack(
            [p.prev_mask_logits.reshape(1, *p.prev_mask_logits.shape[-2:]) for p in prompts]
        )
        return logits.to(device).float().clamp(-PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
    return None


def _merge(results: list[tuple[list[int], HeadsOutput]], count: int) -> ObjectHeadsResult:
    if len(results) == 1 and results[0][0] == list(range(count)):
        out = results[0][1]
        return ObjectHeadsResult(
            out.low_res_masks,
            out.high_res_masks,
            out.predicted_iou,
            out.obj_ptr,
            out.object_score_logits,
            list(out.multimask_iou.unbind(0)),
        )
    template = results[0][1]

    def gather(name: str) -> torch.Tensor:
        first = getattr(template, name)
        merged = first.new_empty((count, *first.shape[1:]))
        for rows, out in results:
            merged[rows] = getattr(out, name).to(merged.dtype)
        return merged

    ious: list[torch.Tensor | None] = [None] * count
    for rows, out in results:
        for j, row in enumerate(rows):
            ious[row] = out.multimask_iou[j]
    return ObjectHeadsResult(
        gather("low_res_masks"),
        gather("high_res_masks"),
        gather("predicted_iou"),
        gather("obj_ptr"),
        gather("object_score_logits"),
        ious,
    )
