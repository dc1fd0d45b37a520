"""Mask decoder of the SAM heads: prompt tokens + image embedding -> mask logits and scores.

Learned output tokens (object score, IoU, and one token per mask) are prepended to the
prompt tokens and run through the two-way transformer with the image embedding. The image
side is then upsampled 4x (mixing in the stride-8 and stride-4 backbone features when
`use_high_res_features`), and each mask token, through its own small "hypernetwork" MLP,
becomes the weights of a per-pixel linear classifier over the upsampled channels.

Mask token 0 gives the single-mask answer, tokens 1..num_multimask_outputs the candidates
for an ambiguous prompt. SAM2.1's video predictor adds a fallback: when asked for one mask
at inference, if token 0's mask is unstable (its area changes much between logit
thresholds -delta and +delta), the candidate with the highest predicted IoU is returned
instead. The returned SAM token stays token 0 in that case, as in the reference.

Parameter names are those of the official checkpoints' `sam_mask_decoder.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from surgray.model.sam2.config import MaskDecoderConfig
from surgray.model.sam2.layers import MLP, LayerNorm2d
from surgray.model.sam2.two_way_transformer import TwoWayTransformer
from surgray.model.sam2.types import MaskDecoderOutput

# Object-score logit reported by a decoder that does not predict one: "surely present".
_ALWAYS_PRESENT_LOGIT = 10.0


class MaskDecoder(nn.Module):
    def __init__(self, cfg: MaskDecoderConfig, transformer_dim: int) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ValueError(f"transformer_dim must be a multiple of 8, got {transformer_dim}")
        self.cfg = cfg
        self.transformer_dim = transformer_dim
        self.num_multimask_outputs = cfg.num_multimask_outputs
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.pred_obj_scores = cfg.pred_obj_scores
        self.use_high_res_features = cfg.use_high_res_features
        self.use_multimask_token_for_obj_ptr = cfg.use_multimask_token_for_obj_ptr
        self.dynamic_multimask_via_stability = cfg.dynamic_multimask_via_stability
        self.stability_delta = cfg.dynamic_multimask_stability_delta
        self.stability_thresh = cfg.dynamic_multimask_stability_thresh

        self.transformer = TwoWayTransformer(cfg.transformer, transformer_dim)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        if cfg.pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)

        quarter, eighth = transformer_dim // 4, transformer_dim // 8
        # Indices 0..4 fix the checkpoint keys; forward() runs the steps one by one because
        # the high-resolution features join between them.
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, quarter, kernel_size=2, stride=2),
            LayerNorm2d(quarter),
            nn.GELU(),
            nn.ConvTranspose2d(quarter, eighth, kernel_size=2, stride=2),
            nn.GELU(),
        )
        if cfg.use_high_res_features:
            # Applied by the caller to the backbone's stride-4 (s0) and stride-8 (s1) maps.
            self.conv_s0 = nn.Conv2d(transformer_dim, eighth, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, quarter, kernel_size=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, eighth, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            cfg.iou_head_hidden_dim,
            self.num_mask_tokens,
            cfg.iou_head_depth,
            sigmoid_output=cfg.iou_prediction_use_sigmoid,
        )
        if cfg.pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(transformer_dim, transformer_dim, 1, 3)
                if cfg.pred_obj_scores_mlp
                else nn.Linear(transformer_dim, 1)
            )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> MaskDecoderOutput:
        """Decode B prompts.

        image_embeddings: [B, C, h, w], or [1, C, h, w] shared by all prompts with
            `repeat_image`. image_pe: [1, C, h, w] (`PromptEncoder.get_dense_pe()`).
        sparse_prompt_embeddings: [B, N, C]; dense_prompt_embeddings: [B, C, h, w].
        high_res_features: [s0 [B or 1, C/8, 4h, 4w], s1 [B or 1, C/4, 2h, 2w]], already
            projected by `conv_s0` / `conv_s1`; required when `use_high_res_features`.
        """
        self._check_inputs(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
        )
        all_masks, all_iou, mask_tokens, object_score_logits = self._decode_all_tokens(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            high_res_features,
        )
        if multimask_output:
            masks, iou_pred = all_masks[:, 1:], all_iou[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._single_or_best_candidate(all_masks, all_iou)
        else:
            masks, iou_pred = all_masks[:, :1], all_iou[:, :1]

        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens = mask_tokens[:, 1:]
        else:
            sam_tokens = mask_tokens[:, :1]
        return MaskDecoderOutput(
            masks=masks,
            iou_pred=iou_pred,
            sam_tokens=sam_tokens,
            object_score_logits=object_score_logits,
        )

    def _decode_all_tokens(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks and IoU for every mask token, the mask tokens, and the object-score logit."""
        batch = sparse.shape[0]
        learned = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            learned.insert(0, self.obj_score_token.weight)
        first_mask_token = len(learned) - 1  # position of mask token 0 among the output tokens
        output_tokens = torch.cat(learned).unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)

        # A shared image broadcasts over the prompts instead of being copied.
        src = image_embeddings + dense
        if src.shape[0] != batch:
            src = src.expand(batch, -1, -1, -1)
        b, c, h, w = src.shape
        tokens_out, image_out = self.transformer(src, image_pe, tokens)
        iou_token_out = tokens_out[:, first_mask_token - 1]
        mask_tokens_out = tokens_out[:, first_mask_token : first_mask_token + self.num_mask_tokens]

        upscaled = self._upscale(image_out.transpose(1, 2).reshape(b, c, h, w), high_res_features)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(tokens_out[:, 0])
        else:
            object_score_logits = iou_pred.new_full((batch, 1), _ALWAYS_PRESENT_LOGIT)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _upscale(
        self, src: torch.Tensor, high_res_features: list[torch.Tensor] | None
    ) -> torch.Tensor:
        if not self.use_high_res_features:
            return self.output_upscaling(src)
        feat_s0, feat_s1 = self._check_high_res(src, high_res_features)
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        x = act1(norm1(deconv1(src) + feat_s1))
        return act2(deconv2(x) + feat_s0)

    def stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU of the mask thresholded at +delta with the mask thresholded at -delta: [B, M]."""
        flat = mask_logits.flatten(-2)
        inner = (flat > self.stability_delta).sum(-1).float()
        outer = (flat > -self.stability_delta).sum(-1).float()
        # An empty mask at both thresholds is perfectly stable.
        return torch.where(outer > 0, inner / outer, torch.ones_like(outer))

    def _single_or_best_candidate(
        self, all_masks: torch.Tensor, all_iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token 0's mask where it is stable, else the candidate with the best predicted IoU."""
        candidates, candidate_iou = all_masks[:, 1:], all_iou[:, 1:]
        best = candidate_iou.argmax(dim=-1)
        rows = torch.arange(best.shape[0], device=best.device)
        best_mask = candidates[rows, best].unsqueeze(1)
        best_iou = candidate_iou[rows, best].unsqueeze(1)

        single_mask, single_iou = all_masks[:, :1], all_iou[:, :1]
        stable = self.stability_scores(single_mask) >= self.stability_thresh  # [B, 1]
        masks = torch.where(stable[..., None, None], single_mask, best_mask)
        iou = torch.where(stable, single_iou, best_iou)
        return masks, iou

    def _check_inputs(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        repeat_image: bool,
    ) -> None:
        c = self.transformer_dim
        if sparse.ndim != 3 or sparse.shape[-1] != c:
            raise ValueError(
                f"sparse_prompt_embeddings must be [B, N, {c}], got {list(sparse.shape)}"
            )
        batch = sparse.shape[0]
        if image_embeddings.ndim != 4 or image_embeddings.shape[1] != c:
            raise ValueError(
                f"image_embeddings must be [B, {c}, h, w], got {list(image_embeddings.shape)}"
            )
        grid = tuple(image_embeddings.shape[-2:])
        expected_images = 1 if repeat_image else batch
        if image_embeddings.shape[0] != expected_images:
            why = (
                "one image shared by all prompts (repeat_image)"
                if repeat_image
                else "one image per prompt"
            )
            raise ValueError(
                f"image_embeddings batch is {image_embeddings.shape[0]}, expected {expected_images}: {why}"
            )
        if tuple(image_pe.shape) != (1, c, *grid):
            raise ValueError(
                f"image_pe must be [1, {c}, {grid[0]}, {grid[1]}], got {list(image_pe.shape)}"
            )
        if (
            dense.ndim != 4
            or dense.shape[0] not in (1, batch)
            or tuple(dense.shape[1:]) != (c, *grid)
        ):
            raise ValueError(
                f"dense_prompt_embeddings must be [{batch}, {c}, {grid[0]}, {grid[1]}], got {list(dense.shape)}"
            )

    def _check_high_res(
        self, src: torch.Tensor, high_res_features: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if high_res_features is None or len(high_res_features) != 2:
            raise ValueError("this decoder uses high-res features: pass [feat_s0, feat_s1]")
        b, c, h, w = src.shape
        feat_s0, feat_s1 = high_res_features
        for name, feat, channels, factor in (
            ("feat_s0", feat_s0, c // 8, 4),
            ("feat_s1", feat_s1, c // 4, 2),
        ):
            if (
                feat.ndim != 4
                or feat.shape[0] not in (1, b)
                or tuple(feat.shape[1:]) != (channels, factor * h, factor * w)
            ):
                raise ValueError(
                    f"{name} must be [{b} or 1, {channels}, {factor * h}, {factor * w}], got {list(feat.shape)}"
                )
        return feat_s0, feat_s1
