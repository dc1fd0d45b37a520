"""Helpers to build Meta's reference SAM2 (`sam2==1.1.0`) next to ours, for parity tests.

The reference is built from its own YAML files through hydra; for sizes that have no YAML
(our micro test config) the tiny YAML is composed with overrides carrying our numbers, and
the SAM heads (whose widths `SAM2Base` hard-codes) are rebuilt with the reference's own
classes. Nothing here computes an expected value: both networks run their own code.
"""

from __future__ import annotations

import pathlib

import sam2
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from surgray.model.sam2.config import ModelConfig

CONFIG_DIR = pathlib.Path(sam2.__file__).parent / "configs"
OFFICIAL_YAMLS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large": "configs/sam2/sam2_hiera_l.yaml",
}
# What sam2.build_sam.build_sam2_video_predictor adds to every YAML.
VIDEO_PREDICTOR_OVERRIDES = [
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
]


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


def _flatten(prefix: str, data: dict) -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _flatten(f"{prefix}.{key}", value)
        else:
            out.append(f"++{prefix}.{key}={_value(value)}")
    return out


def overrides_for(cfg: ModelConfig) -> list[str]:
    """Hydra overrides that give the SAM2.1 tiny YAML our config's numbers."""
    enc = cfg.image_encoder.model_dump()
    for fixed in ("patch_kernel_size", "patch_stride", "patch_padding"):  # hard-coded there
        enc["trunk"].pop(fixed)
    # Hydra would hand a list where the reference's pooling needs a tuple; the default is ours.
    assert tuple(enc["trunk"].pop("q_stride")) == (2, 2)
    att = cfg.memory_attention.model_dump()
    feat = list(cfg.rope_feat_sizes())
    for name in ("self_attention", "cross_attention"):
        att["layer"][name]["feat_sizes"] = feat
    mem_enc = cfg.memory_encoder.model_dump()
    mem_enc["fuser"]["layer"].pop("drop_path")
    mem_enc["fuser"].pop("input_projection")
    top = {
        "image_size": cfg.image_size,
        "backbone_stride": cfg.backbone_stride,
        **{
            k: v
            for k, v in cfg.memory.model_dump().items()
            if k not in ("storage_dtype", "num_long_term_embeddings")
        },
        **cfg.object_pointer.model_dump(),
        **{k: v for k, v in cfg.prompting.model_dump().items() if k != "fill_hole_area"},
        "use_high_res_features_in_sam": cfg.mask_decoder.use_high_res_features,
        "iou_prediction_use_sigmoid": cfg.mask_decoder.iou_prediction_use_sigmoid,
        "pred_obj_scores": cfg.mask_decoder.pred_obj_scores,
        "pred_obj_scores_mlp": cfg.mask_decoder.pred_obj_scores_mlp,
        "use_multimask_token_for_obj_ptr": cfg.mask_decoder.use_multimask_token_for_obj_ptr,
    }
    extra = {
        k: getattr(cfg.mask_decoder, k)
        for k in (
            "dynamic_multimask_via_stability",
            "dynamic_multimask_stability_delta",
            "dynamic_multimask_stability_thresh",
        )
    }
    return (
        _flatten("model.image_encoder", enc)
        + _flatten("model.memory_attention", att)
        + _flatten("model.memory_encoder", mem_enc)
        + _flatten("model", top)
        + _flatten("model.sam_mask_decoder_extra_args", extra)
    )


def _rebuild_heads(ref, cfg: ModelConfig) -> None:
    """Rebuild the reference's SAM heads with our widths (SAM2Base hard-codes the official)."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    dec = cfg.mask_decoder
    dim = cfg.hidden_dim
    ref.sam_prompt_encoder = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(cfg.feat_size, cfg.feat_size),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=dec.mask_in_chans,
    )
    ref.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=dec.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=dec.transformer.depth,
            embedding_dim=dim,
            mlp_dim=dec.transformer.mlp_dim,
            num_heads=dec.transformer.num_heads,
            attention_downsample_rate=dec.transformer.attention_downsample_rate,
        ),
        transformer_dim=dim,
        iou_head_depth=dec.iou_head_depth,
        iou_head_hidden_dim=dec.iou_head_hidden_dim,
        use_high_res_features=dec.use_high_res_features,
        iou_prediction_use_sigmoid=dec.iou_prediction_use_sigmoid,
        dynamic_multimask_via_stability=dec.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=dec.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=dec.dynamic_multimask_stability_thresh,
        pred_obj_scores=dec.pred_obj_scores,
        pred_obj_scores_mlp=dec.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=dec.use_multimask_token_for_obj_ptr,
    )


def build_reference(cfg: ModelConfig, video: bool = True, yaml_name: str | None = None):
    """The reference network for our config, in eval mode on CPU.

    With `yaml_name` (an official YAML) only the image size and predictor overrides are
    applied; otherwise the tiny YAML is given all our numbers and the heads are rebuilt.
    """
    overrides = list(VIDEO_PREDICTOR_OVERRIDES) if video else []
    if not video:
        overrides += [o for o in VIDEO_PREDICTOR_OVERRIDES[1:4]]
    if yaml_name is not None:
        overrides.append(f"++model.image_size={cfg.image_size}")
        composed = compose(config_name=yaml_name, overrides=overrides)
    else:
        composed = compose(
            config_name=OFFICIAL_YAMLS["sam2.1_hiera_tiny"],
            overrides=overrides + overrides_for(cfg),
        )
    OmegaConf.resolve(composed)
    torch.manual_seed(0)
    ref = instantiate(composed.model, _recursive_=True)
    if yaml_name is None:
        _rebuild_heads(ref, cfg)
    return ref.eval()


def randomize_(module: torch.nn.Module, seed: int, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Give every parameter fresh random values, so no weight is trivially zero or one.

    Matrices and kernels get N(0, gain^2 / fan_in) (std 0.02-0.25 for our sizes), which keeps
    activations at their scale through deep stacks (with a flat std of 0.05 the micro model's
    mask logits shrink to ~1e-3 and any two networks would look equal); vectors get N(0, 0.1^2),
    norm weights 1 + N(0, 0.1^2). Buffers (e.g. the prompt encoder's Fourier matrix) keep their
    values. Returns the full state dict.
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(module.named_parameters())
    state = module.state_dict()
    for key in sorted(params):
        value = state[key]
        noise = torch.randn(value.shape, generator=gen)
        if value.ndim >= 2:
            fan_in = max(value[0].numel(), 1)
            state[key] = noise * gain / fan_in**0.5
        elif key.endswith("weight") and "norm" in key:
            state[key] = 1.0 + 0.1 * noise
        else:
            state[key] = 0.1 * noise
    module.load_state_dict(state)
    return {k: v.clone() for k, v in module.state_dict().items()}
