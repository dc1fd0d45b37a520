"""transformers' `Sam2VideoModel` with our weights, for side-by-side benchmarks.

Three parts:
- `hf_config(cfg)`: the `Sam2VideoConfig` with the numbers of one of our `ModelConfig`s
  (official sizes at any image size, and the micro test size).
- `to_hf_state_dict(state)`: our (= Meta's) state-dict keys renamed to transformers' layout.
  The rules below were worked out by listing both models' keys and shapes side by side;
  `load_hf_model` loads the result strictly, so a missing or misnamed key fails loudly.
- `HFStreamingTracker`: transformers' streaming API (`model(inference_session=..., frame=...)`)
  driven without its processors, which import torchvision (research/dependencies.md §4b):
  prompts go straight into the session in model-input pixels, as the processor would put them.

transformers is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch.nn import functional as F

from surgray.model.sam2.config import ModelConfig

# Whole-name prefixes first, then names inside modules (applied in this order, each once).
_PREFIXES = [
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.", "vision_encoder.neck."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("obj_ptr_proj.", "object_pointer_proj."),
    ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("no_mem_embed", "no_memory_embedding"),
    ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("no_obj_ptr", "no_object_pointer"),
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
]
_INNER = [
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.neck\.convs\.(\d+)\.conv\.", r".neck.convs.\1."),
    (r"\.pe_layer\.positional_encoding_gaussian_matrix$", ".shared_embedding.positional_embedding"),
    (r"\.mask_downscaling\.0\.", ".mask_embed.conv1."),
    (r"\.mask_downscaling\.1\.", ".mask_embed.layer_norm1."),
    (r"\.mask_downscaling\.3\.", ".mask_embed.conv2."),
    (r"\.mask_downscaling\.4\.", ".mask_embed.layer_norm2."),
    (r"\.mask_downscaling\.6\.", ".mask_embed.conv3."),
    (r"\.output_upscaling\.0\.", ".upscale_conv1."),
    (r"\.output_upscaling\.1\.", ".upscale_layer_norm."),
    (r"\.output_upscaling\.3\.", ".upscale_conv2."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"\.out_proj\.", ".o_proj."),
    (r"\.norm(\d?)\.", r".layer_norm\1."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"\.pix_feat_proj\.", ".feature_projection."),
    (r"^memory_encoder\.o_proj\.", "memory_encoder.projection."),
    (r"\.fuser\.", ".memory_fuser."),
    (r"\.dwconv\.", ".depthwise_conv."),
    (r"\.pwconv(\d)\.", r".pointwise_conv\1."),
    (r"\.gamma$", ".scale"),
]
# Our MLPs are `<prefix>.layers.<i>`; transformers names the first and last layer apart.
_MLP = re.compile(
    r"^(?P<prefix>(?:.+\.)?(?:mlp|[a-z_]*head|output_hypernetworks_mlps\.\d+|object_pointer_proj))"
    r"\.layers\.(?P<i>\d+)\.(?P<leaf>\w+)$"
)
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(?P<i>\d+)\.(?P<leaf>\w+)$")


def _rename(key: str) -> str:
    for old, new in _PREFIXES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    for pattern, replacement in _INNER:
        key = re.sub(pattern, replacement, key)
    return key


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict (Meta's key names) in `Sam2VideoModel`'s layout."""
    renamed = {_rename(k): v for k, v in state.items()}
    mlp_depth: dict[str, int] = defaultdict(int)
    for key in renamed:
        if m := _MLP.match(key):
            mlp_depth[m["prefix"]] = max(mlp_depth[m["prefix"]], int(m["i"]) + 1)
    downsampler_last = max(
        (int(m["i"]) for k in renamed if (m := _DOWNSAMPLER.match(k))), default=-1
    )
    out: dict[str, torch.Tensor] = {}
    point_embeddings: dict[int, torch.Tensor] = {}
    for key, value in renamed.items():
        if m := _MLP.match(key):
            i, depth = int(m["i"]), mlp_depth[m["prefix"]]
            name = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
            key = f"{m['prefix']}.{name}.{m['leaf']}"
        elif m := _DOWNSAMPLER.match(key):
            # Ours: [conv, norm, act] * n then the final 1x1 conv, in one Sequential.
            i = int(m["i"])
            if i == downsampler_last:
                name = "final_conv"
            else:
                name = f"layers.{i // 3}." + ("conv" if i % 3 == 0 else "layer_norm")
            key = f"memory_encoder.mask_downsampler.{name}.{m['leaf']}"
        elif m := re.match(r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$", key):
            point_embeddings[int(m[1])] = value
            continue
        out[key] = value
    if point_embeddings:
        out["prompt_encoder.point_embed.weight"] = torch.cat(
            [point_embeddings[i] for i in sorted(point_embeddings)]
        )
    # transformers keeps the prompt encoder's Fourier matrix twice (also for the image grid).
    gaussian = out.get("prompt_encoder.shared_embedding.positional_embedding")
    if gaussian is not None:
        out["shared_image_embedding.positional_embedding"] = gaussian
    return out


def hf_config(cfg: ModelConfig):
    """`Sam2VideoConfig` with our config's numbers (raises where transformers has no knob)."""
    from transformers import (
        Sam2HieraDetConfig,
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
        Sam2VisionConfig,
    )

    trunk, neck = cfg.image_encoder.trunk, cfg.image_encoder.neck
    if trunk.q_pool != 3 or trunk.dim_mul != 2.0 or trunk.head_mul != 2.0:
        raise ValueError(f"{cfg.name}: transformers' Hiera needs q_pool 3 and doubling widths")
    stages = len(trunk.stages)
    size = cfg.image_size
    hiera = Sam2HieraDetConfig(
        hidden_size=trunk.embed_dim,
        num_attention_heads=trunk.num_heads,
        image_size=[size, size],
        blocks_per_stage=list(trunk.stages),
        embed_dim_per_stage=[trunk.embed_dim * 2**i for i in range(stages)],
        num_attention_heads_per_stage=[trunk.num_heads * 2**i for i in range(stages)],
        window_size_per_stage=list(trunk.window_spec),
        global_attention_blocks=list(trunk.global_att_blocks),
        window_positional_embedding_background_size=list(trunk.window_pos_embed_bkg_spatial_size),
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=list(neck.backbone_channel_list),
        backbone_feature_sizes=[[size // s, size // s] for s in (4, 8, 16)],
        fpn_hidden_size=neck.d_model,
        fpn_top_down_levels=list(neck.fpn_top_down_levels),
    )
    dec = cfg.mask_decoder
    att = cfg.memory_attention
    mem = cfg.memory_encoder
    ptr = cfg.object_pointer
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(
            hidden_size=cfg.hidden_dim,
            image_size=size,
            patch_size=cfg.backbone_stride,
            mask_input_channels=dec.mask_in_chans,
        ),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(
            hidden_size=cfg.hidden_dim,
            mlp_dim=dec.transformer.mlp_dim,
            num_hidden_layers=dec.transformer.depth,
            num_attention_heads=dec.transformer.num_heads,
            attention_downsample_rate=dec.transformer.attention_downsample_rate,
            num_multimask_outputs=dec.num_multimask_outputs,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
            dynamic_multimask_via_stability=dec.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=dec.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=dec.dynamic_multimask_stability_thresh,
        ),
        image_size=size,
        num_maskmem=cfg.memory.num_maskmem,
        sigmoid_scale_for_mem_enc=cfg.memory.sigmoid_scale_for_mem_enc,
        sigmoid_bias_for_mem_enc=cfg.memory.sigmoid_bias_for_mem_enc,
        enable_occlusion_spatial_embedding=cfg.memory.no_obj_embed_spatial,
        enable_temporal_pos_encoding_for_object_pointers=ptr.add_tpos_enc_to_obj_ptrs,
        max_object_pointers_in_encoder=ptr.max_obj_ptrs_in_encoder,
        max_cond_frame_num=cfg.memory.max_cond_frames_in_attn,
        memory_attention_hidden_size=att.d_model,
        memory_attention_num_layers=att.num_layers,
        memory_attention_num_attention_heads=att.layer.self_attention.num_heads,
        memory_attention_feed_forward_hidden_size=att.layer.dim_feedforward,
        memory_attention_rope_feat_sizes=list(cfg.rope_feat_sizes()),
        memory_encoder_hidden_size=mem.in_dim,
        memory_encoder_output_channels=mem.out_dim,
        mask_downsampler_embed_dim=mem.mask_downsampler.embed_dim,
        mask_downsampler_total_stride=mem.mask_downsampler.total_stride,
        memory_fuser_num_layers=mem.fuser.num_layers,
        memory_fuser_embed_dim=mem.fuser.layer.dim,
        memory_fuser_intermediate_dim=4 * mem.fuser.layer.dim,
    )


def load_hf_model(cfg: ModelConfig, state: dict[str, torch.Tensor]):
    """`Sam2VideoModel` for `cfg` with our weights, strictly loaded, eval mode."""
    from transformers import Sam2VideoModel

    model = Sam2VideoModel(hf_config(cfg)).eval()
    converted = to_hf_state_dict(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = [k for k in expected if k in converted and converted[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"weights do not convert to Sam2VideoModel: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(converted, strict=True)
    return model


class HFStreamingTracker:
    """transformers' streaming video loop: prompts on frame 0, then one call per frame."""

    def __init__(self, model, image_size: int) -> None:
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        self.model = model
        self.image_size = image_size
        self.session = Sam2VideoInferenceSession(
            video=None,
            video_height=image_size,
            video_width=image_size,
            inference_device="cpu",
            dtype=torch.float32,
        )

    def add_box(self, obj_id: int, box: torch.Tensor) -> None:
        """A box in model-input pixels, as the processor sends it (two corner clicks)."""
        obj_idx = self.session.obj_id_to_idx(obj_id)
        coords = box.reshape(1, 1, 2, 2).float()
        labels = torch.tensor([[[2, 3]]], dtype=torch.int32)
        self.session.add_point_inputs(obj_idx, 0, {"point_coords": coords, "point_labels": labels})
        self.session.obj_with_new_inputs = list(self.session.obj_ids)

    def step(self, frame: torch.Tensor) -> torch.Tensor:
        """[3, S, S] normalised frame -> [num_objects, S, S] mask logits at input size."""
        out = self.model(inference_session=self.session, frame=frame)
        low_res = out.pred_masks.reshape(-1, 1, *out.pred_masks.shape[-2:])
        size = (self.image_size, self.image_size)
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)[:, 0]
