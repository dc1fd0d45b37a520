"""The SAM2 network: our implementation, state-dict compatible with Meta's `SAM2Base`.

`SAM2Model` owns the parts (image encoder, prompt encoder, mask decoder, memory attention,
memory encoder) and the few top-level parameters of the reference (`maskmem_tpos_enc`,
`no_mem_embed`, `no_mem_pos_enc`, `no_obj_ptr`, `obj_ptr_proj`, `obj_ptr_tpos_proj`,
`no_obj_embed_spatial`, `mask_downsample`), with the reference's names and shapes, plus
`long_term_tpos_enc` [N, 1, 1, mem_dim] when `cfg.memory.num_long_term_embeddings > 0`
(SAM2S DiveMem). The step logic lives in the parts, each holding only what it uses:
`memory_readout` (memories -> conditioned features), `sam_heads` (prompts -> masks, IoU,
object score, pointer), `memory_writer` (mask -> memory) and `pointer_head` (decoder token ->
object pointer -> memory tokens). The parameters stay registered here under the reference's
names (checkpoint keys, the training configs' name prefixes and the optimizer's parameter order
are contracts); each property hands out a small part over them, built per call so it never
holds a stale tensor after a load or a move.

What the tracker uses (all batched: K frames through the encoder, B objects per step):

- `encode_images(images [K, 3, S, S]) -> BackboneOutput`; `frame_features(out, k) -> FrameFeatures`.
- `track_frame(features, selections, frame_idx, prompts=None, num_frames=None,
  multimask=None, is_conditioning=None, run_memory_encoder=True) -> FrameOutput`:
  the reference's `track_step` for B objects at once. `selections[i]` is object i's
  `MemorySelection` from its policy, or None on its first frame (no memory). Pointer
  offsets in the selection are already signed in the tracking direction, so tracking in
  reverse needs nothing more here. `FrameOutput.entries()` gives the `MemoryEntry` per object.
- `encode_memory(features, mask_logits, object_score_logits, from_prompts)`: re-encode a
  memory (e.g. after the tracker suppressed overlaps between objects).
- `predict_masks(features, clicks, mask_logits, multimask) -> HeadsOutput`: single-image
  SAM use (no memory), all candidate masks; used by `ImagePredictor`.

Behaviour at inference follows the reference *video predictor*: the memory of a prompted
frame is encoded from its low-resolution mask upsampled to the input size, thresholded
(`binarize_mask_from_pts_for_mem_enc`). In training mode it follows `SAM2Base.track_step`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.init import trunc_normal_

from surgray.model.sam2.config import ModelConfig, check_model_config
from surgray.model.sam2.frame_types import FrameFeatures, FrameOutput, HeadsOutput, ObjectPrompt
from surgray.model.sam2.heads import SamHeads
from surgray.model.sam2.image_encoder import ImageEncoder
from surgray.model.sam2.layers import MLP
from surgray.model.sam2.mask_decoder import MaskDecoder
from surgray.model.sam2.memory_attention import MemoryAttention
from surgray.model.sam2.memory_encoder import MemoryEncoder
from surgray.model.sam2.memory_readout import MemoryReadout
from surgray.model.sam2.memory_types import MemorySelection
from surgray.model.sam2.memory_writer import MemoryWriter
from surgray.model.sam2.object_pointer import ObjectPointerHead
from surgray.model.sam2.prompt_encoder import PromptEncoder
from surgray.model.sam2.types import BackboneOutput


class SAM2Model(nn.Module):
    """SAM2 / SAM2.1 (and SAM2S-extended) network. See the module docstring for the API."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_model_config(cfg)
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.hidden_dim = cfg.hidden_dim
        self.mem_dim = cfg.mem_dim
        ptr = cfg.object_pointer

        self.image_encoder = ImageEncoder(cfg.image_encoder)
        if ptr.use_obj_ptrs_in_encoder:
            # Brings a full-size mask prompt to the decoder's 4x mask resolution and logit scale.
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(cfg.memory_attention)
        self.memory_encoder = MemoryEncoder(cfg.memory_encoder)

        self.maskmem_tpos_enc = _small_param(cfg.memory.num_maskmem, 1, 1, self.mem_dim)
        self.no_mem_embed = _small_param(1, 1, self.hidden_dim)
        self.no_mem_pos_enc = _small_param(1, 1, self.hidden_dim)
        self.no_obj_ptr = None
        if cfg.mask_decoder.pred_obj_scores and ptr.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = _small_param(1, self.hidden_dim)
        self.no_obj_embed_spatial = None
        if cfg.memory.no_obj_embed_spatial:
            self.no_obj_embed_spatial = _small_param(1, self.mem_dim)
        self.long_term_tpos_enc = None
        if cfg.memory.num_long_term_embeddings > 0:
            self.long_term_tpos_enc = _small_param(
                cfg.memory.num_long_term_embeddings, 1, 1, self.mem_dim
            )

        side = cfg.feat_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.hidden_dim,
            image_embedding_size=(side, side),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_decoder.mask_in_chans,
        )
        self.sam_mask_decoder = MaskDecoder(cfg.mask_decoder, transformer_dim=self.hidden_dim)
        if not ptr.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = nn.Identity()
        elif ptr.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
        else:
            self.obj_ptr_proj = nn.Linear(self.hidden_dim, self.hidden_dim)
        if ptr.proj_tpos_enc_in_obj_ptrs:
            # Keeps the pointers' temporal encoding apart from the spatial one.
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def uses_high_res_features(self) -> bool:
        return self.cfg.mask_decoder.use_high_res_features

    # ----------------------------------------------------------------- parts
    @property
    def pointer_head(self) -> ObjectPointerHead:
        """Decoder token -> object pointer -> memory tokens (`obj_ptr_proj`, `no_obj_ptr`,
        `obj_ptr_tpos_proj`)."""
        return ObjectPointerHead(
            self.obj_ptr_proj,
            self.no_obj_ptr,
            self.obj_ptr_tpos_proj,
            self.cfg.object_pointer,
            self.mem_dim,
        )

    @property
    def sam_heads(self) -> SamHeads:
        """Prompts + features -> masks, IoU, object score and pointer."""
        return SamHeads(
            self.sam_prompt_encoder,
            self.sam_mask_decoder,
            self._modules.get("mask_downsample"),  # absent without object pointers
            self.pointer_head,
            self.cfg,
        )

    @property
    def memory_readout(self) -> MemoryReadout:
        """Memories + a frame's features -> memory-conditioned features."""
        return MemoryReadout(
            self.memory_attention,
            self.memory_encoder.position_encoding,
            self.maskmem_tpos_enc,
            self.long_term_tpos_enc,
            self.no_mem_embed,
            self.no_mem_pos_enc,
            self.pointer_head,
            self.cfg,
        )

    @property
    def memory_writer(self) -> MemoryWriter:
        """A frame's features and masks -> memory features."""
        return MemoryWriter(self.memory_encoder, self.no_obj_embed_spatial, self.cfg.memory)

    # ----------------------------------------------------------------- image encoder
    def encode_images(self, images: torch.Tensor) -> BackboneOutput:
        """[K, 3, S, S] normalised images -> features of the K frames.

        With high-resolution decoder features, `backbone_fpn[0]` and `[1]` are returned already
        projected by the decoder's `conv_s0` / `conv_s1` (done once per frame, not per click).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [K, 3, S, S], got {list(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size} (the model's image_size), "
                f"got {tuple(images.shape[-2:])}; see surgray.model.sam2.preprocess.to_model_input"
            )
        return self.project_high_res(self.image_encoder(images))

    def project_high_res(self, out: BackboneOutput) -> BackboneOutput:
        """The encoder's output with the two finest FPN levels through the decoder's
        projections (they belong to the decoder, so they train with it)."""
        if not self.uses_high_res_features:
            return out
        fpn = list(out.backbone_fpn)
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return BackboneOutput(out.vision_features, list(out.vision_pos_enc), fpn)

    def frame_features(self, backbone: BackboneOutput, index: int = 0) -> FrameFeatures:
        """The features of frame `index` of a batch encoded by `encode_images` (batch 1 views)."""
        if not -backbone.vision_features.shape[0] <= index < backbone.vision_features.shape[0]:
            raise IndexError(f"frame {index} of a batch of {backbone.vision_features.shape[0]}")
        pick = slice(index, index + 1) if index != -1 else slice(-1, None)
        high_res = (
            [t[pick] for t in backbone.backbone_fpn[:2]] if self.uses_high_res_features else []
        )
        return FrameFeatures(
            backbone.backbone_fpn[-1][pick], backbone.vision_pos_enc[-1][pick], high_res
        )

    def encode_frames(self, images: torch.Tensor) -> list[FrameFeatures]:
        out = self.encode_images(images)
        return [self.frame_features(out, k) for k in range(images.shape[0])]

    # ----------------------------------------------------------------- tracking
    def track_frame(
        self,
        features: FrameFeatures,
        selections: Sequence[MemorySelection | None],
        frame_idx: int,
        prompts: Sequence[ObjectPrompt | None] | None = None,
        num_frames: int | None = None,
        multimask: bool | None = None,
        is_conditioning: Sequence[bool] | None = None,
        run_memory_encoder: bool = True,
    ) -> FrameOutput:
        """One tracking step for the B = len(selections) objects of a frame.

        features: this frame (batch 1, shared, or one row per object).
        selections[i]: memories of object i (None: its first frame, no memory).
        prompts[i]: clicks / box / mask given for object i on this frame, or None.
        num_frames: video length if known (normalises pointer distances like the reference;
            None for streaming, see `object_pointer.pointer_time_scale`).
        multimask: force several-candidates decoding on or off; None applies the config rule
            (few clicks on a first frame, and while tracking when configured).
        is_conditioning[i]: recorded in the memory entries; default: object i has a prompt.
        """
        count = len(selections)
        if count == 0:
            raise ValueError("track_frame needs at least one object")
        prompt_list = list(prompts) if prompts is not None else [None] * count
        if len(prompt_list) != count:
            raise ValueError(f"{len(prompt_list)} prompts for {count} objects")
        selection_list = list(selections)
        feats = features.expand(count)

        fused = self.memory_readout.condition(
            feats.image_embed, feats.image_pos, selection_list, num_frames
        )
        sam_heads = self.sam_heads
        flags = [
            multimask
            if multimask is not None
            else sam_heads.wants_multimask(
                selection is not None and not selection.is_empty,
                0 if prompt is None else prompt.num_clicks,
            )
            for selection, prompt in zip(selection_list, prompt_list)
        ]
        heads = sam_heads.for_objects(feats.image_embed, fused, feats.high_res, prompt_list, flags)
        from_prompts = [p is not None for p in prompt_list]
        high_res_masks = heads.high_res_masks
        if not self.training and any(p is not None and p.mask is not None for p in prompt_list):
            # The reference video predictor encodes a mask prompt's memory from its low-res
            # version upsampled (for decoder outputs the two are the same tensor already).
            high_res_masks = self._upsample(heads.low_res_masks)
        memory = None
        if run_memory_encoder and self.cfg.memory.num_maskmem > 0:
            memory = self.memory_writer.encode(
                feats.image_embed,
                high_res_masks,
                heads.object_score_logits,
                torch.tensor(from_prompts, device=high_res_masks.device),
                self.training,
            )
        return FrameOutput(
            frame_idx=frame_idx,
            low_res_masks=heads.low_res_masks,
            high_res_masks=high_res_masks,
            predicted_iou=heads.predicted_iou,
            object_score_logits=heads.object_score_logits.reshape(-1),
            obj_ptr=heads.obj_ptr,
            memory_features=memory,
            multimask_iou=heads.multimask_iou,
            is_conditioning=list(is_conditioning) if is_conditioning is not None else from_prompts,
        )

    def encode_memory(
        self,
        features: FrameFeatures,
        mask_logits: torch.Tensor,
        object_score_logits: torch.Tensor,
        from_prompts: Sequence[bool] | torch.Tensor,
    ) -> torch.Tensor:
        """Memory features [B, mem_dim, h, w] (storage dtype) of B masks on one frame.

        mask_logits: [B, 1, S, S] or low-res [B, 1, S/4, S/4] (upsampled as the reference does).
        """
        if tuple(mask_logits.shape[-2:]) != (self.image_size, self.image_size):
            mask_logits = self._upsample(mask_logits.float())
        count = mask_logits.shape[0]
        feats = features.expand(count)
        flags = torch.as_tensor(from_prompts, dtype=torch.bool, device=mask_logits.device)
        return self.memory_writer.encode(
            feats.image_embed, mask_logits, object_score_logits, flags, self.training
        )

    def predict_masks(
        self,
        features: FrameFeatures,
        clicks: tuple[torch.Tensor, torch.Tensor] | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> HeadsOutput:
        """Single-image SAM: B prompts on one image without memory, every candidate mask.

        clicks: ([B, P, 2] model-input pixels, [B, P] labels; box corners as labels 2, 3
        first); mask_logits: [B, 1, S/4, S/4] earlier low-res logits, or None.
        """
        count = (
            clicks[0].shape[0]
            if clicks is not None
            else (mask_logits.shape[0] if mask_logits is not None else 1)
        )
        feats = features.expand(count)
        fused = self.memory_readout.condition(feats.image_embed, feats.image_pos, [None] * count)
        return self.sam_heads.run(fused, feats.high_res, clicks, mask_logits, multimask)

    def memory_grid_encoding(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Sine position encoding of a memory map, flattened row-major: [h*w, mem_dim]."""
        return self.memory_readout.grid_encoding(height, width, device, dtype)

    def forward(self, *args, **kwargs):
        raise TypeError(
            "SAM2Model has no single forward; use encode_images, track_frame or predict_masks"
        )

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )


def _small_param(*shape: int) -> nn.Parameter:
    param = nn.Parameter(torch.zeros(*shape))
    trunc_normal_(param, std=0.02)
    return param
