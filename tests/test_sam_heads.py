"""SAM heads (prompt encoder, two-way transformer, mask decoder) against Meta's reference.

Reference modules come from the `sam2` package: for the official sizes they are built by
`SAM2Base._build_sam_heads` from the official YAML files, so the key/shape comparison checks
our variant configs too. Parity tests copy the reference's (re-randomised) weights into ours
with strict loading and compare outputs in eval mode.
"""

from __future__ import annotations

import pathlib

import pytest
import sam2
import torch
import yaml
from sam2.modeling.sam.mask_decoder import MaskDecoder as RefMaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder as RefPromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer as RefTwoWayTransformer
from sam2.modeling.sam2_base import SAM2Base
from torch import nn

from surgray.model.checkpoints.variants import get_variant, micro_config
from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.mask_decoder import MaskDecoder
from surgray.model.sam2.prompt_encoder import PromptEncoder

CONFIG_DIR = pathlib.Path(sam2.__file__).parent / "configs"
OFFICIAL_YAMLS = {
    "sam2.1_hiera_tiny": "sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_tiny": "sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small": "sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus": "sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large": "sam2/sam2_hiera_l.yaml",
}
# What `sam2.build_sam.build_sam2_video_predictor` adds on top of the YAML.
VIDEO_PREDICTOR_DECODER_ARGS = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ---------------------------------------------------------------- building both sides


def reference_heads_from_yaml(yaml_name: str, image_size: int) -> tuple[nn.Module, nn.Module]:
    """The reference's own builder, run on a bare SAM2Base holding only what it reads."""
    model = yaml.safe_load((CONFIG_DIR / yaml_name).read_text())["model"]
    host = SAM2Base.__new__(SAM2Base)
    nn.Module.__init__(host)
    host.hidden_dim = model["image_encoder"]["neck"]["d_model"]
    host.mem_dim = model["memory_encoder"]["out_dim"]
    host.image_size = image_size
    host.backbone_stride = model.get("backbone_stride", 16)
    for flag in (
        "use_high_res_features_in_sam",
        "iou_prediction_use_sigmoid",
        "pred_obj_scores",
        "pred_obj_scores_mlp",
        "use_multimask_token_for_obj_ptr",
        "use_obj_ptrs_in_encoder",
        "use_mlp_for_obj_ptr_proj",
        "proj_tpos_enc_in_obj_ptrs",
    ):
        setattr(host, flag, bool(model.get(flag, False)))  # SAM2Base defaults are all False
    host.sam_mask_decoder_extra_args = dict(VIDEO_PREDICTOR_DECODER_ARGS)
    SAM2Base._build_sam_heads(host)
    return host.sam_prompt_encoder, host.sam_mask_decoder


def reference_heads(cfg: ModelConfig) -> tuple[RefPromptEncoder, RefMaskDecoder]:
    """Reference modules with the hyper-parameters of one of our configs (micro, variants)."""
    dec = cfg.mask_decoder
    grid = cfg.feat_size
    prompt = RefPromptEncoder(
        embed_dim=cfg.hidden_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=dec.mask_in_chans,
    )
    decoder = RefMaskDecoder(
        transformer_dim=cfg.hidden_dim,
        transformer=RefTwoWayTransformer(
            depth=dec.transformer.depth,
            embedding_dim=cfg.hidden_dim,
            num_heads=dec.transformer.num_heads,
            mlp_dim=dec.transformer.mlp_dim,
            attention_downsample_rate=dec.transformer.attention_downsample_rate,
        ),
        num_multimask_outputs=dec.num_multimask_outputs,
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
    return prompt, decoder


def our_heads(cfg: ModelConfig) -> tuple[PromptEncoder, MaskDecoder]:
    grid = cfg.feat_size
    prompt = PromptEncoder(
        embed_dim=cfg.hidden_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=cfg.mask_decoder.mask_in_chans,
    )
    return prompt, MaskDecoder(cfg.mask_decoder, cfg.hidden_dim)


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def randomise(module: nn.Module, seed: int) -> None:
    """Overwrite every parameter and buffer with seeded noise (nothing stays 0 or 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            noise = torch.randn(tensor.shape, generator=gen)
            if tensor.ndim < 2:  # biases and norm scales
                scale = 0.5
            elif "embed" in name or "token" in name:  # learned vectors and the Fourier matrix
                scale = 1.0
            else:  # weights: 1/sqrt(fan_in) keeps activations O(1) through the deep stacks
                transposed_conv = name.startswith("output_upscaling")
                fan_in = tensor.shape[0] if transposed_conv else tensor[0].numel()
                scale = fan_in**-0.5
            tensor.copy_(noise * scale)


def paired(cfg: ModelConfig, seed: int = 0):
    """(ours, reference) prompt encoders and decoders with identical random weights, eval."""
    ref_prompt, ref_decoder = reference_heads(cfg)
    randomise(ref_prompt, seed)
    randomise(ref_decoder, seed + 1)
    prompt, decoder = our_heads(cfg)
    prompt.load_state_dict(ref_prompt.state_dict(), strict=True)
    decoder.load_state_dict(ref_decoder.state_dict(), strict=True)
    for m in (ref_prompt, ref_decoder, prompt, decoder):
        m.eval()
    return prompt, decoder, ref_prompt, ref_decoder


def plain_sam_config() -> ModelConfig:
    """Micro with every SAM2 decoder extra switched off (SAM1-style decoder)."""
    return micro_config().updated(
        mask_decoder={
            "use_high_res_features": False,
            "iou_prediction_use_sigmoid": False,
            "pred_obj_scores": False,
            "pred_obj_scores_mlp": False,
            "use_multimask_token_for_obj_ptr": False,
            "dynamic_multimask_via_stability": False,
        }
    )


def obj_score_linear_config() -> ModelConfig:
    return micro_config().updated(mask_decoder={"pred_obj_scores_mlp": False})


# ---------------------------------------------------------------- keys and shapes


@pytest.mark.parametrize("image_size", [1024, 512])
@pytest.mark.parametrize("name", sorted(OFFICIAL_YAMLS))
def test_official_keys_and_shapes(name: str, image_size: int) -> None:
    ref_prompt, ref_decoder = reference_heads_from_yaml(OFFICIAL_YAMLS[name], image_size)
    prompt, decoder = our_heads(get_variant(name, image_size=image_size))
    assert shapes(prompt) == shapes(ref_prompt)
    assert shapes(decoder) == shapes(ref_decoder)
    # Spot checks of literals from the official checkpoints.
    assert shapes(decoder)["transformer.layers.0.mlp.layers.0.weight"] == (2048, 256)
    assert shapes(decoder)["transformer.layers.0.cross_attn_token_to_image.q_proj.weight"] == (
        128,
        256,
    )
    assert shapes(prompt)["pe_layer.positional_encoding_gaussian_matrix"] == (2, 128)
    # A strict load of the reference's tensors must succeed (names, shapes, nothing left over).
    prompt.load_state_dict(ref_prompt.state_dict(), strict=True)
    decoder.load_state_dict(ref_decoder.state_dict(), strict=True)


@pytest.mark.parametrize(
    "cfg_factory",
    [micro_config, plain_sam_config, obj_score_linear_config],
    ids=["micro", "plain", "linear_obj"],
)
def test_micro_keys_and_shapes(cfg_factory) -> None:
    cfg = cfg_factory()
    assert (
        cfg.hidden_dim,
        cfg.mask_decoder.transformer.mlp_dim,
        cfg.mask_decoder.transformer.num_heads,
    ) == (
        32,
        64,
        2,
    )
    ref_prompt, ref_decoder = reference_heads(cfg)
    prompt, decoder = our_heads(cfg)
    assert shapes(prompt) == shapes(ref_prompt)
    assert shapes(decoder) == shapes(ref_decoder)


# ---------------------------------------------------------------- prompt encoder parity


def _points(batch: int, n: int, image_size: int, labels: list[int], seed: int):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, n, 2, generator=gen) * image_size
    return coords, torch.tensor(labels, dtype=torch.int32).reshape(batch, n)


def _box(batch: int, image_size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, 2, 2, generator=gen) * image_size
    return torch.cat([corners.min(1).values, corners.max(1).values], dim=-1)  # [B, 4]


def _mask(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 5


@pytest.mark.parametrize(
    "case",
    [
        "points",
        "box",
        "mask",
        "points_box",
        "points_mask",
        "points_box_mask",
        "box_as_points",
        "none",
    ],
)
def test_prompt_encoder_parity(case: str) -> None:
    cfg = micro_config()
    prompt, _, ref_prompt, _ = paired(cfg, seed=10)
    s, b = cfg.image_size, 2
    points = _points(b, 3, s, [1, 0, -1, 0, 1, 1], seed=1) if "points" in case else None
    if case == "box_as_points":
        points = _points(b, 2, s, [2, 3, 2, 3], seed=2)
    boxes = _box(b, s, seed=3) if "box" in case and case != "box_as_points" else None
    masks = _mask(b, 4 * cfg.feat_size, seed=4) if "mask" in case else None

    with torch.no_grad():
        sparse, dense = prompt(points, boxes, masks)
        ref_sparse, ref_dense = ref_prompt(points, boxes, masks)
    assert sparse.shape == ref_sparse.shape
    assert dense.shape == ref_dense.shape
    torch.testing.assert_close(sparse, ref_sparse, **TOL)
    torch.testing.assert_close(dense, ref_dense, **TOL)
    expected_tokens = {"points": 4, "box": 2, "points_box": 5, "box_as_points": 3, "none": 0}
    if case in expected_tokens:
        assert sparse.shape[1] == expected_tokens[case]


def test_dense_pe_parity_official_size() -> None:
    cfg = get_variant("sam2.1_hiera_small")
    prompt, _, ref_prompt, _ = paired(cfg, seed=20)
    pe = prompt.get_dense_pe()
    assert pe.shape == (1, 256, 64, 64)
    torch.testing.assert_close(pe, ref_prompt.get_dense_pe(), **TOL)
    points = _points(1, 2, 1024, [1, 0], seed=5)
    with torch.no_grad():
        torch.testing.assert_close(
            prompt(points, _box(1, 1024, 6), None)[0],
            ref_prompt(points, _box(1, 1024, 6), None)[0],
            **TOL,
        )


# ---------------------------------------------------------------- mask decoder parity


def _decoder_inputs(
    cfg: ModelConfig, prompt: PromptEncoder, batch: int, seed: int, images: int | None = None
):
    """Image features, prompt embeddings and (projected) high-res features."""
    gen = torch.Generator().manual_seed(seed)
    c, g = cfg.hidden_dim, cfg.feat_size
    images = batch if images is None else images
    image = torch.randn(images, c, g, g, generator=gen)
    high_res = [
        torch.randn(images, c // 8, 4 * g, 4 * g, generator=gen),
        torch.randn(images, c // 4, 2 * g, 2 * g, generator=gen),
    ]
    labels = [1, 0, 1] * batch
    with torch.no_grad():
        sparse, dense = prompt(_points(batch, 3, cfg.image_size, labels, seed + 1), None, None)
    return image, prompt.get_dense_pe(), sparse, dense, high_res


def _compare(out, ref_out) -> None:
    ref_masks, ref_iou, ref_tokens, ref_obj = ref_out
    torch.testing.assert_close(out.masks, ref_masks, **TOL)
    torch.testing.assert_close(out.iou_pred, ref_iou, **TOL)
    torch.testing.assert_close(out.sam_tokens, ref_tokens, **TOL)
    torch.testing.assert_close(out.object_score_logits, ref_obj, **TOL)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    "cfg_factory",
    [micro_config, plain_sam_config, obj_score_linear_config],
    ids=["micro", "plain", "linear_obj"],
)
def test_mask_decoder_parity(cfg_factory, multimask: bool) -> None:
    cfg = cfg_factory()
    prompt, decoder, _, ref_decoder = paired(cfg, seed=30)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=3, seed=7)
    high_res = high_res if cfg.mask_decoder.use_high_res_features else None
    args = (image, pe, sparse, dense, multimask, False, high_res)
    with torch.no_grad():
        out = decoder(*args)
        ref_out = ref_decoder(*args)
    _compare(out, ref_out)
    m = 3 if multimask else 1
    assert out.masks.shape == (3, m, 4 * cfg.feat_size, 4 * cfg.feat_size)
    assert out.iou_pred.shape == (3, m)
    token_count = m if cfg.mask_decoder.use_multimask_token_for_obj_ptr else 1
    assert out.sam_tokens.shape == (3, token_count, cfg.hidden_dim)
    if not cfg.mask_decoder.pred_obj_scores:
        assert torch.equal(out.object_score_logits, torch.full((3, 1), 10.0))


def test_mask_decoder_parity_repeat_image() -> None:
    cfg = micro_config()
    prompt, decoder, _, ref_decoder = paired(cfg, seed=40)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=3, seed=8, images=1)
    args = (image, pe, sparse, dense, True, True, high_res)
    with torch.no_grad():
        _compare(decoder(*args), ref_decoder(*args))


def test_mask_decoder_parity_train_mode_ignores_stability() -> None:
    cfg = micro_config()
    prompt, decoder, _, ref_decoder = paired(cfg, seed=50)
    decoder.train()
    ref_decoder.train()
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=2, seed=9)
    args = (image, pe, sparse, dense, False, False, high_res)
    with torch.no_grad():
        out = decoder(*args)
        ref_all = ref_decoder.predict_masks(image, pe, sparse, dense, False, high_res)
        _compare(out, ref_decoder(*args))
    torch.testing.assert_close(out.masks, ref_all[0][:, :1], **TOL)


def test_mask_decoder_parity_official_size() -> None:
    cfg = get_variant("sam2.1_hiera_small", image_size=512)
    prompt, decoder, _, ref_decoder = paired(cfg, seed=60)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=2, seed=10)
    for multimask in (True, False):
        args = (image, pe, sparse, dense, multimask, False, high_res)
        with torch.no_grad():
            _compare(decoder(*args), ref_decoder(*args))


def test_dynamic_multimask_fallback_triggers_per_item() -> None:
    """Item 0's single mask is exactly 0 everywhere (unstable), item 1's is huge (stable).

    Mask token 0's hypernetwork is made to output the unit vector on upscaled channel 0, so
    its logits are that channel. The stride-4 feature added just before the last GELU drives
    channel 0 to -1e4 (GELU gives exactly 0) for item 0 and to +1e4 for item 1; the other
    channels stay random, so the three candidate masks differ from the single one.
    """
    cfg = micro_config()
    prompt, decoder, _, ref_decoder = paired(cfg, seed=70)
    with torch.no_grad():
        last = ref_decoder.output_hypernetworks_mlps[0].layers[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = 1.0
    decoder.load_state_dict(ref_decoder.state_dict(), strict=True)
    image, pe, sparse, dense, (feat_s0, feat_s1) = _decoder_inputs(cfg, prompt, batch=2, seed=11)
    feat_s0[0, 0] = -1e4
    feat_s0[1, 0] = 1e4
    args = (image, pe, sparse, dense, False, False, [feat_s0, feat_s1])

    with torch.no_grad():
        all_masks, all_iou, _, _ = ref_decoder.predict_masks(
            image, pe, sparse, dense, False, [feat_s0, feat_s1]
        )
        stability = ref_decoder._get_stability_scores(all_masks[:, :1])[:, 0]
        out = decoder(*args)
        ref_out = ref_decoder(*args)
    assert stability[0] < 0.98 and stability[1] >= 0.98  # the construction works as intended
    best = int(all_iou[0, 1:].argmax()) + 1
    assert torch.equal(ref_out[0][0, 0], all_masks[0, best])  # item 0 fell back
    assert torch.equal(ref_out[0][1, 0], all_masks[1, 0])  # item 1 kept token 0
    assert not torch.equal(all_masks[0, best], all_masks[0, 0])
    _compare(out, ref_out)
    torch.testing.assert_close(
        decoder.stability_scores(all_masks),
        ref_decoder._get_stability_scores(all_masks),
        rtol=0,
        atol=0,
    )


# ---------------------------------------------------------------- the comparison can fail


def test_perturbed_weights_break_parity() -> None:
    cfg = micro_config()
    prompt, decoder, ref_prompt, ref_decoder = paired(cfg, seed=80)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=2, seed=12)
    args = (image, pe, sparse, dense, True, False, high_res)
    with torch.no_grad():
        _compare(decoder(*args), ref_decoder(*args))  # equal before
        decoder.transformer.layers[1].mlp.layers[0].weight[0, 0] += 1e-3
        with pytest.raises(AssertionError):
            _compare(decoder(*args), ref_decoder(*args))

        points = _points(2, 2, cfg.image_size, [1, 0, 1, 1], seed=13)
        torch.testing.assert_close(
            prompt(points, None, None)[0], ref_prompt(points, None, None)[0], **TOL
        )
        prompt.pe_layer.positional_encoding_gaussian_matrix[1, 3] += 1e-3
        with pytest.raises(AssertionError):
            torch.testing.assert_close(
                prompt(points, None, None)[0], ref_prompt(points, None, None)[0], **TOL
            )


def test_stability_threshold_change_breaks_parity() -> None:
    """Same weights, different fallback threshold: the single-mask outputs must differ."""
    cfg = micro_config()
    prompt, _, _, ref_decoder = paired(cfg, seed=90)
    strict = MaskDecoder(
        cfg.mask_decoder.model_copy(update={"dynamic_multimask_stability_thresh": 1.01}), 32
    )
    lax = MaskDecoder(
        cfg.mask_decoder.model_copy(update={"dynamic_multimask_stability_thresh": -1.0}), 32
    )
    for m in (strict, lax):
        m.load_state_dict(ref_decoder.state_dict(), strict=True)
        m.eval()
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=2, seed=14)
    args = (image, pe, sparse, dense, False, False, high_res)
    with torch.no_grad():
        all_masks = ref_decoder.predict_masks(image, pe, sparse, dense, False, high_res)[0]
        # Threshold above 1: never stable, always a candidate; below 0: always token 0.
        assert torch.equal(lax(*args).masks, all_masks[:, :1])
        assert not torch.equal(strict(*args).masks, all_masks[:, :1])


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def micro_heads():
    cfg = micro_config()
    prompt, decoder = our_heads(cfg)
    return cfg, prompt.eval(), decoder.eval()


def test_prompt_encoder_rejects_mismatched_batches(micro_heads) -> None:
    cfg, prompt, _ = micro_heads
    points = _points(2, 1, cfg.image_size, [1, 1], seed=0)
    with pytest.raises(ValueError, match="batch size"):
        prompt(points, _box(3, cfg.image_size, 0), None)
    with pytest.raises(ValueError, match="batch size"):
        prompt(points, None, _mask(1, 4 * cfg.feat_size, 0))


def test_prompt_encoder_rejects_bad_point_shapes(micro_heads) -> None:
    cfg, prompt, _ = micro_heads
    labels = torch.ones(2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"coords must have shape \[B, P, 2\]"):
        prompt((torch.zeros(2, 3, 3), labels), None, None)
    with pytest.raises(ValueError, match=r"coords must have shape \[B, P, 2\]"):
        prompt((torch.zeros(3, 2), labels), None, None)
    with pytest.raises(ValueError, match=r"labels must have shape \[B, P\]"):
        prompt((torch.zeros(2, 3, 2), torch.ones(2, 4, dtype=torch.int32)), None, None)
    with pytest.raises(ValueError, match="pair"):
        prompt(torch.zeros(2, 3, 2), None, None)
    with pytest.raises(ValueError, match="boxes must have shape"):
        prompt(None, torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match="masks must have shape"):
        prompt(None, None, torch.zeros(2, 1, 16, 16))


@pytest.mark.parametrize("bad", [4, -2, 7])
def test_prompt_encoder_rejects_unknown_labels(micro_heads, bad: int) -> None:
    cfg, prompt, _ = micro_heads
    coords, _ = _points(1, 3, cfg.image_size, [1, 1, 1], seed=0)
    labels = torch.tensor([[1, bad, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match=rf"labels must be in .*\[{bad}\]"):
        prompt((coords, labels), None, None)


def test_prompt_encoder_rejects_fractional_labels(micro_heads) -> None:
    cfg, prompt, _ = micro_heads
    coords, _ = _points(1, 2, cfg.image_size, [1, 1], seed=0)
    with pytest.raises(ValueError, match="whole numbers"):
        prompt((coords, torch.tensor([[1.0, 0.5]])), None, None)


def test_mask_decoder_rejects_bad_inputs(micro_heads) -> None:
    cfg, prompt, decoder = micro_heads
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=2, seed=15)
    with pytest.raises(ValueError, match="image_embeddings batch is 1, expected 2"):
        decoder(image[:1], pe, sparse, dense, True, False, high_res)
    with pytest.raises(ValueError, match="image_embeddings batch is 2, expected 1"):
        decoder(image, pe, sparse, dense, True, True, high_res)
    with pytest.raises(ValueError, match="image_pe must be"):
        decoder(image, pe.expand(2, -1, -1, -1), sparse, dense, True, False, high_res)
    with pytest.raises(ValueError, match="sparse_prompt_embeddings must be"):
        decoder(image, pe, sparse[..., :16], dense, True, False, high_res)
    with pytest.raises(ValueError, match="dense_prompt_embeddings must be"):
        decoder(image, pe, sparse, dense[..., :4], True, False, high_res)
    with pytest.raises(ValueError, match="high-res features"):
        decoder(image, pe, sparse, dense, True, False, None)
    with pytest.raises(ValueError, match="feat_s1 must be"):
        decoder(image, pe, sparse, dense, True, False, [high_res[0], high_res[0]])
