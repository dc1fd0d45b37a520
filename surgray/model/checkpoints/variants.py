"""Named model variants: the official SAM2 / SAM2.1 sizes and a micro size for tests.

The numbers are those of Meta's YAML files (`sam2/configs/sam2.1/*.yaml`, `sam2/configs/sam2/*.yaml`);
`tests/test_variants.py` compares every one of them with the reference package.
"""

from __future__ import annotations

from surgray.model.sam2.config import (
    CXBlockConfig,
    FuserConfig,
    HieraConfig,
    ImageEncoderConfig,
    MaskDecoderConfig,
    MaskDownSamplerConfig,
    MemoryAttentionConfig,
    MemoryAttentionLayerConfig,
    MemoryConfig,
    MemoryEncoderConfig,
    ModelConfig,
    NeckConfig,
    ObjectPointerConfig,
    RoPEAttentionConfig,
    SinePositionConfig,
    TwoWayTransformerConfig,
)

# size -> (trunk, neck channels), as in the official YAMLs.
_TRUNKS: dict[str, HieraConfig] = {
    "tiny": HieraConfig(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "small": HieraConfig(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 11, 2),
        global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "base_plus": HieraConfig(embed_dim=112, num_heads=2),
    "large": HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_pos_embed_bkg_spatial_size=(7, 7),
        window_spec=(8, 4, 16, 8),
    ),
}

_SIZE_ALIASES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


def _channels(trunk: HieraConfig) -> tuple[int, ...]:
    dims = [trunk.embed_dim * 2**i for i in range(len(trunk.stages))]
    return tuple(reversed(dims))


def _official(size: str, version: str) -> ModelConfig:
    trunk = _TRUNKS[size]
    encoder = ImageEncoderConfig(
        trunk=trunk, neck=NeckConfig(backbone_channel_list=_channels(trunk))
    )
    if version == "2.1":
        return ModelConfig(name=f"sam2.1_hiera_{size}", image_encoder=encoder)
    # SAM2.0: no "object absent" spatial embedding, unprojected and unsigned pointer positions
    # (and none at all on pointers), and the decoder's dynamic multimask is not used.
    return ModelConfig(
        name=f"sam2_hiera_{size}",
        image_encoder=encoder,
        memory=MemoryConfig(no_obj_embed_spatial=False),
        object_pointer=ObjectPointerConfig(
            add_tpos_enc_to_obj_ptrs=False,
            proj_tpos_enc_in_obj_ptrs=False,
            use_signed_tpos_enc_to_obj_ptrs=False,
        ),
    )


def micro_config(image_size: int = 128) -> ModelConfig:
    """A SAM2.1-shaped network small enough for exact CPU tests (about 1 M parameters).

    Every code path of the full model is present (windowed and global attention, high-res
    features, object pointers with projected signed temporal encodings, no-object embeddings);
    only widths and depths shrink.
    """
    d_model, mem_dim = 32, 16
    rope = RoPEAttentionConfig(embedding_dim=d_model, num_heads=1, dropout=0.0)
    return ModelConfig(
        name="micro",
        image_size=image_size,
        image_encoder=ImageEncoderConfig(
            trunk=HieraConfig(
                embed_dim=8,
                num_heads=1,
                stages=(1, 1, 2, 1),
                # Block 3, not 2: a block that pools queries (the first of a stage) cannot be
                # global in the reference Hiera (its window arithmetic divides by zero).
                global_att_blocks=(3,),
                window_pos_embed_bkg_spatial_size=(4, 4),
                window_spec=(8, 4, 4, 2),
            ),
            neck=NeckConfig(
                d_model=d_model,
                backbone_channel_list=(64, 32, 16, 8),
                position_encoding=SinePositionConfig(num_pos_feats=d_model),
            ),
        ),
        memory_attention=MemoryAttentionConfig(
            d_model=d_model,
            num_layers=2,
            layer=MemoryAttentionLayerConfig(
                d_model=d_model,
                dim_feedforward=64,
                dropout=0.0,
                self_attention=rope,
                cross_attention=rope.model_copy(
                    update={"rope_k_repeat": True, "kv_in_dim": mem_dim}
                ),
            ),
        ),
        memory_encoder=MemoryEncoderConfig(
            out_dim=mem_dim,
            in_dim=d_model,
            position_encoding=SinePositionConfig(num_pos_feats=mem_dim),
            mask_downsampler=MaskDownSamplerConfig(embed_dim=d_model),
            fuser=FuserConfig(layer=CXBlockConfig(dim=d_model)),
        ),
        mask_decoder=MaskDecoderConfig(
            transformer=TwoWayTransformerConfig(mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        ),
    )


def _registry() -> dict[str, ModelConfig]:
    variants = {}
    for size in _TRUNKS:
        for version in ("2.1", "2"):
            cfg = _official(size, version)
            variants[cfg.name] = cfg
    variants["micro"] = micro_config()
    return variants


def variant_names() -> list[str]:
    return sorted(_registry())


def get_variant(name: str, image_size: int | None = None, **changes) -> ModelConfig:
    """The config of a named variant, e.g. `get_variant("sam2.1_hiera_small", image_size=512)`.

    Accepts the official short names too (`sam2.1_hiera_s`, `sam2_hiera_b+`), and bare sizes
    (`tiny`, `s`, `base_plus`, ...), which mean SAM2.1.
    """
    canonical = name
    if name in _SIZE_ALIASES or name in _SIZE_ALIASES.values():
        canonical = "sam2.1_hiera_" + _SIZE_ALIASES.get(name, name)
    for prefix in ("sam2.1_hiera_", "sam2_hiera_"):
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            canonical = prefix + _SIZE_ALIASES.get(suffix, suffix)
    registry = _registry()
    if canonical not in registry:
        raise KeyError(f"unknown model variant {name!r}; known: {', '.join(sorted(registry))}")
    cfg = registry[canonical]
    if image_size is not None:
        cfg = cfg.with_image_size(image_size)
    if changes:
        cfg = cfg.updated(**changes)
    return cfg
