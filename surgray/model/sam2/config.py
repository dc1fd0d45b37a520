"""Typed configuration of the SAM2 network.

Field names follow the keys of Meta's SAM2 YAML files so that a reader can put the two side by
side, but they are grouped by the part of the network they configure. Values that the
reference derives from other values (RoPE feature sizes from the image size, the memory
attention width from the neck width) are derived here too, by `ModelConfig.resolved()`, so
that changing `image_size` is a one-field edit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HieraConfig(_Strict):
    """Hiera trunk (hierarchical ViT with windowed and global attention)."""

    embed_dim: int = 96
    num_heads: int = 1
    drop_path_rate: float = 0.0
    q_pool: int = 3  # number of stage transitions that pool queries
    q_stride: tuple[int, int] = (2, 2)
    stages: tuple[int, ...] = (2, 3, 16, 3)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    patch_kernel_size: tuple[int, int] = (7, 7)
    patch_stride: tuple[int, int] = (4, 4)
    patch_padding: tuple[int, int] = (3, 3)


class SinePositionConfig(_Strict):
    num_pos_feats: int = 256
    normalize: bool = True
    scale: float | None = None
    temperature: float = 10000.0


class NeckConfig(_Strict):
    """FPN neck: projects trunk stages to `d_model` channels, top-down fusion on some levels."""

    d_model: int = 256
    backbone_channel_list: tuple[int, ...] = (768, 384, 192, 96)
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: Literal["nearest", "bilinear", "bicubic"] = "nearest"
    fuse_type: Literal["sum", "avg"] = "sum"
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    position_encoding: SinePositionConfig = SinePositionConfig(num_pos_feats=256)


class ImageEncoderConfig(_Strict):
    trunk: HieraConfig = HieraConfig()
    neck: NeckConfig = NeckConfig()
    scalp: int = 1  # number of lowest-resolution FPN levels to drop


class RoPEAttentionConfig(_Strict):
    """Attention with 2-D axial rotary position embedding (memory attention)."""

    embedding_dim: int = 256
    num_heads: int = 1
    downsample_rate: int = 1
    dropout: float = 0.1
    kv_in_dim: int | None = None
    rope_theta: float = 10000.0
    # None: derived from the image size (image_size // 16 on each side).
    feat_sizes: tuple[int, int] | None = None
    rope_k_repeat: bool = False


class MemoryAttentionLayerConfig(_Strict):
    d_model: int = 256
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Literal["relu", "gelu", "glu"] = "relu"
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    pos_enc_at_cross_attn_queries: bool = False
    self_attention: RoPEAttentionConfig = RoPEAttentionConfig()
    cross_attention: RoPEAttentionConfig = RoPEAttentionConfig(rope_k_repeat=True, kv_in_dim=64)


class MemoryAttentionConfig(_Strict):
    d_model: int = 256
    pos_enc_at_input: bool = True
    num_layers: int = 4
    layer: MemoryAttentionLayerConfig = MemoryAttentionLayerConfig()


class MaskDownSamplerConfig(_Strict):
    embed_dim: int = 256
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    total_stride: int = 16


class CXBlockConfig(_Strict):
    """ConvNeXt block used by the memory fuser."""

    dim: int = 256
    kernel_size: int = 7
    padding: int = 3
    drop_path: float = 0.0
    layer_scale_init_value: float = 1e-6
    use_dwconv: bool = True


class FuserConfig(_Strict):
    layer: CXBlockConfig = CXBlockConfig()
    num_layers: int = 2
    input_projection: bool = False


class MemoryEncoderConfig(_Strict):
    out_dim: int = 64
    in_dim: int = 256
    position_encoding: SinePositionConfig = SinePositionConfig(num_pos_feats=64)
    mask_downsampler: MaskDownSamplerConfig = MaskDownSamplerConfig()
    fuser: FuserConfig = FuserConfig()


class TwoWayTransformerConfig(_Strict):
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2


class MaskDecoderConfig(_Strict):
    """Prompt encoder + two-way transformer + mask/IoU/object-score heads."""

    num_multimask_outputs: int = 3
    transformer: TwoWayTransformerConfig = TwoWayTransformerConfig()
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = True
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    # SAM2.1 video predictor: with one click, fall back to the best of 3 masks when the
    # single-mask output is unstable.
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    mask_in_chans: int = 16


class MemoryConfig(_Strict):
    """How frames become memories and how memories are read back."""

    num_maskmem: int = 7  # temporal slots: one for conditioning frames + 6 recent frames
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True
    use_mask_input_as_output_without_sam: bool = True
    directly_add_no_mem_embed: bool = True
    no_obj_embed_spatial: bool = True  # SAM2.1
    memory_temporal_stride_for_eval: int = 1
    max_cond_frames_in_attn: int = -1
    non_overlap_masks_for_mem_enc: bool = False
    # The reference stores memories in bf16; fp32 keeps full precision at twice the bytes.
    storage_dtype: Literal["bf16", "fp32"] = "bf16"
    # SAM2S DiveMem: learned temporal embeddings for long-term memory slots (0: none, as in
    # every official checkpoint; long-term frames then reuse the conditioning-frame encoding).
    num_long_term_embeddings: int = 0


class ObjectPointerConfig(_Strict):
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True  # SAM2.1
    use_signed_tpos_enc_to_obj_ptrs: bool = True  # SAM2.1
    only_obj_ptrs_in_the_past_for_eval: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = True


class PromptingConfig(_Strict):
    """When the decoder returns several masks."""

    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    fill_hole_area: int = 8


class ModelConfig(_Strict):
    """The whole SAM2 network. `name` is informational (the variant it came from)."""

    name: str = "custom"
    image_size: int = 1024
    backbone_stride: int = 16
    image_encoder: ImageEncoderConfig = ImageEncoderConfig()
    memory_attention: MemoryAttentionConfig = MemoryAttentionConfig()
    memory_encoder: MemoryEncoderConfig = MemoryEncoderConfig()
    mask_decoder: MaskDecoderConfig = MaskDecoderConfig()
    memory: MemoryConfig = MemoryConfig()
    object_pointer: ObjectPointerConfig = ObjectPointerConfig()
    prompting: PromptingConfig = PromptingConfig()
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def hidden_dim(self) -> int:
        return self.image_encoder.neck.d_model

    @property
    def mem_dim(self) -> int:
        return self.memory_encoder.out_dim

    @property
    def feat_size(self) -> int:
        """Side of the stride-16 feature map (64 at 1024, 32 at 512)."""
        return self.image_size // self.backbone_stride

    def rope_feat_sizes(self) -> tuple[int, int]:
        """RoPE grid of memory attention: explicit if configured, else the feature map size."""
        explicit = self.memory_attention.layer.self_attention.feat_sizes
        return explicit if explicit is not None else (self.feat_size, self.feat_size)

    def with_image_size(self, image_size: int) -> ModelConfig:
        if image_size % 32 != 0 or image_size <= 0:
            raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
        return self.model_copy(update={"image_size": image_size})

    def updated(self, **changes) -> ModelConfig:
        """A copy with nested changes, e.g. updated(memory={"storage_dtype": "fp32"})."""
        data = self.model_dump()
        _deep_update(data, changes)
        return ModelConfig.model_validate(data)


def _deep_update(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def check_model_config(cfg: ModelConfig) -> None:
    """Raise a ValueError naming the fields of a config that cannot make a working network."""
    hidden, mem = cfg.hidden_dim, cfg.mem_dim
    problems = []
    if cfg.image_size % cfg.backbone_stride:
        problems.append(f"image_size {cfg.image_size} is not a multiple of backbone_stride")
    if cfg.memory_attention.d_model != hidden:
        problems.append(
            f"memory_attention.d_model {cfg.memory_attention.d_model} != neck d_model {hidden}"
        )
    if cfg.memory_encoder.in_dim != hidden:
        problems.append(
            f"memory_encoder.in_dim {cfg.memory_encoder.in_dim} != neck d_model {hidden}"
        )
    kv = cfg.memory_attention.layer.cross_attention.kv_in_dim
    if kv is not None and kv != mem:
        problems.append(f"cross_attention.kv_in_dim {kv} != memory_encoder.out_dim {mem}")
    ptr = cfg.object_pointer
    if ptr.proj_tpos_enc_in_obj_ptrs and not ptr.add_tpos_enc_to_obj_ptrs:
        problems.append("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")
    if ptr.fixed_no_obj_ptr and not (
        cfg.mask_decoder.pred_obj_scores and ptr.use_obj_ptrs_in_encoder
    ):
        problems.append("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
    if ptr.use_obj_ptrs_in_encoder and hidden % mem:
        problems.append(f"pointer width {hidden} is not a multiple of memory width {mem}")
    if not cfg.memory.directly_add_no_mem_embed and mem != hidden:
        problems.append("directly_add_no_mem_embed=False needs memory_encoder.out_dim == d_model")
    if problems:
        raise ValueError(f"model config {cfg.name!r} is inconsistent: " + "; ".join(problems))
