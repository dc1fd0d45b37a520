"""Every named variant against Meta's reference YAML files (sam2 1.1.0).

1. `SAM2Model(get_variant(name))` and the reference `SAM2VideoPredictor` composed from the
   variant's YAML (with the overrides `build_sam2_video_predictor` adds) have the same
   state-dict keys and shapes.
2. Every scalar in the composed YAML equals our config's value, and every field of our
   config that the YAML leaves out equals the reference's default for it (the constructor
   default of the class the YAML instantiates, or the width `SAM2Base` hard-codes).

The reference is built without weight initialisation and ours on the meta device, so even
the large variants take well under a second each.
"""

from __future__ import annotations

import contextlib
import inspect

import pytest
import torch
from hydra import compose
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.misc import load_video_frames

from devtools.sam2_reference import OFFICIAL_YAMLS, VIDEO_PREDICTOR_OVERRIDES
from surgray.model.checkpoints.variants import get_variant, variant_names
from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.network import SAM2Model

NAMES = [n for n in variant_names() if n != "micro"]

# Ours-only fields: no reference counterpart, with the value that reproduces the reference.
OURS_ONLY = {
    "name": None,
    "memory.storage_dtype": "bf16",  # the video predictor casts memories to bfloat16
    "memory.num_long_term_embeddings": 0,  # SAM2S extension; no official model has it
}
# SAM2Base flattens three of our groups into its own keyword arguments.
_FLAT_GROUPS = ("memory", "object_pointer", "prompting")
_DECODER_TOP = (
    "iou_prediction_use_sigmoid",
    "pred_obj_scores",
    "pred_obj_scores_mlp",
    "use_multimask_token_for_obj_ptr",
)


@contextlib.contextmanager
def _no_weight_init():
    """Skip the random fills of every init function (they all end in these in-place ops)."""
    names = ("uniform_", "normal_", "erfinv_")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, lambda self, *a, **k: self)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def _composed(name: str) -> DictConfig:
    cfg = compose(config_name=OFFICIAL_YAMLS[name], overrides=VIDEO_PREDICTOR_OVERRIDES)
    OmegaConf.resolve(cfg)
    return cfg


def _top_level_map() -> dict[str, str]:
    """SAM2Base / SAM2VideoPredictor keyword -> our config path."""
    mapping = {"image_size": "image_size", "backbone_stride": "backbone_stride"}
    defaults = ModelConfig()
    for group in _FLAT_GROUPS:
        for field in type(getattr(defaults, group)).model_fields:
            if f"{group}.{field}" not in OURS_ONLY:
                mapping[field] = f"{group}.{field}"
    mapping["use_high_res_features_in_sam"] = "mask_decoder.use_high_res_features"
    for field in _DECODER_TOP:
        mapping[field] = f"mask_decoder.{field}"
    for field in (
        "dynamic_multimask_via_stability",
        "dynamic_multimask_stability_delta",
        "dynamic_multimask_stability_thresh",
    ):
        mapping[f"sam_mask_decoder_extra_args.{field}"] = f"mask_decoder.{field}"
    return mapping


def _ours(cfg: ModelConfig, path: str):
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _leaves(data, prefix: str = ""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], data


def _norm(value):
    if isinstance(value, (list, tuple, ListConfig)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _our_path_for_yaml(key: str, top: dict[str, str]) -> str | None:
    """Our config path for a dotted key under `model.` of the YAML (None: not a setting)."""
    last = key.rsplit(".", 1)[-1]
    if last == "_target_" or key in ("compile_image_encoder",):
        return None
    if key.startswith(("image_encoder.", "memory_attention.", "memory_encoder.")):
        return key
    return top.get(key)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_equal_reference(name):
    with _no_weight_init():
        ref = instantiate(_composed(name).model, _recursive_=True)
    assert isinstance(ref, SAM2VideoPredictor)
    with torch.device("meta"):
        ours = SAM2Model(get_variant(name))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(ref_shapes) - set(our_shapes)) == []
    assert sorted(set(our_shapes) - set(ref_shapes)) == []
    assert {k: v for k, v in our_shapes.items() if ref_shapes[k] != v} == {}
    # Spot-check the structure the comparison relies on.
    assert ("no_obj_embed_spatial" in ref_shapes) == name.startswith("sam2.1")
    assert len(ref_shapes) > 400


@pytest.mark.parametrize("name", NAMES)
def test_every_yaml_value_equals_our_config(name):
    cfg = get_variant(name)
    composed = OmegaConf.to_container(_composed(name).model)
    top = _top_level_map()
    compared, mismatches = set(), []
    for key, value in _leaves(composed):
        path = _our_path_for_yaml(key, top)
        if path is None:
            continue
        if key.endswith("feat_sizes"):  # ours derives the RoPE grid from the image size
            ours_value = cfg.rope_feat_sizes()
        else:
            ours_value = _ours(cfg, path)
        compared.add(path)
        if _norm(ours_value) != _norm(value):
            mismatches.append(f"{key}: yaml {value!r} vs ours {ours_value!r}")
    assert mismatches == []
    assert len(compared) > 60  # the walk really covered the YAML


def _reference_default(composed: dict, path: str, top_inverse: dict[str, str]):
    """The reference's value for a config path the YAML does not set."""
    if path in top_inverse:
        kwarg = top_inverse[path]
        if kwarg.startswith("sam_mask_decoder_extra_args."):
            from sam2.modeling.sam.mask_decoder import MaskDecoder

            return inspect.signature(MaskDecoder).parameters[kwarg.split(".")[1]].default
        for cls in (SAM2VideoPredictor, SAM2Base):
            params = inspect.signature(cls.__init__).parameters
            if kwarg in params:
                return params[kwarg].default
        raise KeyError(kwarg)
    # A component: the default of the constructor argument of the class the YAML names.
    parts = path.split(".")
    node, target = composed, None
    for part in parts[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
        target = node.get("_target_", target) if isinstance(node, dict) else target
    if target is None:
        return inspect.Parameter.empty
    return _constructor_default(get_class(target), parts[-1])


def _constructor_default(cls: type, name: str):
    """Default of `name` in `cls`'s constructor, following **kwargs to base classes."""
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return params[name].default
    raise KeyError(f"{cls.__name__} takes no argument {name!r}")


def _hard_coded(ref: SAM2Base) -> dict[str, object]:
    """Widths SAM2Base / Hiera fix in code rather than reading from the YAML."""
    decoder = ref.sam_mask_decoder
    block = decoder.transformer.layers[0]
    patch = ref.image_encoder.trunk.patch_embed.proj
    return {
        "mask_decoder.num_multimask_outputs": decoder.num_multimask_outputs,
        "mask_decoder.transformer.depth": len(decoder.transformer.layers),
        "mask_decoder.transformer.num_heads": block.self_attn.num_heads,
        "mask_decoder.transformer.mlp_dim": block.mlp.layers[0].out_features,
        "mask_decoder.transformer.attention_downsample_rate": (
            block.cross_attn_token_to_image.embedding_dim
            // block.cross_attn_token_to_image.internal_dim
        ),
        "mask_decoder.iou_head_depth": decoder.iou_prediction_head.num_layers,
        "mask_decoder.iou_head_hidden_dim": decoder.iou_prediction_head.layers[0].out_features,
        "mask_decoder.mask_in_chans": ref.sam_prompt_encoder.mask_downscaling[3].out_channels,
        "image_encoder.trunk.patch_kernel_size": patch.kernel_size,
        "image_encoder.trunk.patch_stride": patch.stride,
        "image_encoder.trunk.patch_padding": patch.padding,
        "image_mean": inspect.signature(load_video_frames).parameters["img_mean"].default,
        "image_std": inspect.signature(load_video_frames).parameters["img_std"].default,
        "memory_attention.layer.self_attention.feat_sizes": None,  # derived: see YAML test
        "memory_attention.layer.cross_attention.feat_sizes": None,
    }


@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2_hiera_large"])
def test_config_fields_absent_from_yaml_equal_reference_defaults(name):
    cfg = get_variant(name)
    composed_cfg = _composed(name)
    composed = OmegaConf.to_container(composed_cfg.model)
    top = _top_level_map()
    in_yaml = {_our_path_for_yaml(k, top) for k, _ in _leaves(composed)}
    with _no_weight_init():
        ref = instantiate(composed_cfg.model, _recursive_=True)
    hard = _hard_coded(ref)
    inverse = {v: k for k, v in top.items()}
    mismatches, checked = [], 0
    for path, value in _leaves(cfg.model_dump()):
        if path in in_yaml or path in OURS_ONLY:
            if path in OURS_ONLY and OURS_ONLY[path] is not None:
                assert value == OURS_ONLY[path], path
            continue
        if path in hard:
            expected = hard[path]
            if path.endswith("feat_sizes"):
                continue
        else:
            expected = _reference_default(composed, path, inverse)
        checked += 1
        if expected is inspect.Parameter.empty or _norm(expected) != _norm(value):
            mismatches.append(f"{path}: reference {expected!r} vs ours {value!r}")
    assert mismatches == []
    assert checked > 15
