"""ReSurgSAM2 assembly: stage-1 shapes and gradients, key layout, strict checkpoints in our and
the released layout, bad input, and a short end-to-end referring run on a synthetic clip
(micro SAM2, tiny CSTMamba, tiny random CLIP with a tokenizer written here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _referring_fixtures import (
    CATEGORIES,
    script_scores,
    tiny_model,
    tiny_referring_config,
    write_tiny_clip,
)

from surgray.data.synthetic import generate_clip
from surgray.data.synthetic_plan import SyntheticClipConfig
from surgray.model.checkpoints.referring_checkpoint import (
    build_resurgsam2,
    load_referring_checkpoint,
    save_referring_checkpoint,
    to_resurgsam2_layout,
)
from surgray.model.checkpoints.sam2_checkpoint import (
    NEW_MODULE_PREFIXES,
    CheckpointMismatchError,
    load_checkpoint,
)
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.config import ReferringConfig
from surgray.model.referring.cstmamba import CSTMambaConfig
from surgray.model.referring.resurgsam2 import ReSurgSAM2, referring_stage
from surgray.model.sam2.network import SAM2Model
from surgray.model.text.encoder import TextEncoder
from surgray.tracking.cifs import CIFSConfig
from surgray.tracking.tracker import Tracker

SIZE = 64


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def model(clip_dir) -> ReSurgSAM2:
    return tiny_model(clip_dir, size=SIZE)


def images(count: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, SIZE, SIZE, generator=gen)


# ---------------------------------------------------------------- stage 1


def test_refer_shapes_and_padding_free_batching(model):
    with torch.no_grad():
        frames = model.encode_frames(images(3))
        texts = ["the grasper", "the needle driver on the left", "spe"]
        history = [frames[1].image_embed, frames[0].image_embed]
        out = model.refer(frames[2], model.encode_text(texts), history)
        assert out.low_res_masks.shape == (3, 1, SIZE // 4, SIZE // 4)
        assert out.high_res_masks.shape == (3, 1, SIZE, SIZE)
        assert out.low_res_multimasks.shape == (3, 3, SIZE // 4, SIZE // 4)
        assert out.multimask_iou.shape == (3, 3) and out.predicted_iou.shape == (3,)
        assert out.object_score_logits.shape == (3, 1) and out.obj_ptr.shape == (3, 32)
        # The kept mask is the candidate with the highest predicted IoU.
        best = out.multimask_iou.argmax(dim=1)
        torch.testing.assert_close(out.predicted_iou, out.multimask_iou.max(dim=1).values)
        torch.testing.assert_close(out.low_res_masks[:, 0], out.low_res_multimasks[[0, 1, 2], best])
        # Each expression alone gives what it gets inside a padded batch.
        for i, text in enumerate(texts):
            alone = model.refer(frames[2], model.encode_text([text]), history)
            torch.testing.assert_close(
                alone.low_res_masks[0], out.low_res_masks[i], atol=2e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                alone.object_score_logits[0], out.object_score_logits[i], atol=2e-5, rtol=1e-4
            )


def test_stage1_can_decode_a_single_mask(model):
    """`stage1_multimask=False`: the decoder's single-mask token answers the text, so the loss
    trains the fused text to pick the object (the demo's small model); same weights otherwise."""

    def copy(multimask: bool) -> ReSurgSAM2:
        update = {"stage1_multimask": multimask}
        built = ReSurgSAM2(model.cfg, model.referring_cfg.model_copy(update=update))
        built.load_state_dict(model.state_dict())
        built.text_encoder = model.text_encoder
        script_scores(built, object_score=4.0, iou=0.9)  # objects present: masks kept
        return built.eval()

    several, single = copy(True), copy(False)
    with torch.no_grad():
        frames = model.encode_frames(images(2, seed=4))
        text = model.encode_text(["the grasper", "the needle driver"])
        several = several.refer(frames[1], text, [frames[0].image_embed])
        one = single.refer(frames[1], text, [frames[0].image_embed])
    assert several.low_res_multimasks.shape[1] == 3 and one.low_res_multimasks.shape[1] == 1
    torch.testing.assert_close(one.low_res_masks, one.low_res_multimasks)
    torch.testing.assert_close(one.object_score_logits, several.object_score_logits)
    # In training the single-mask token answers (at inference SAM2 falls back to the best
    # candidate when that mask is unstable): it is none of the three candidates.
    single.train()
    with torch.no_grad():
        trained = single.refer(frames[1], text, [frames[0].image_embed])
    for k in range(3):
        assert not torch.allclose(trained.low_res_masks[:, 0], several.low_res_multimasks[:, k])


def test_missing_history_is_the_current_frame_repeated(model):
    with torch.no_grad():
        frames = model.encode_frames(images(2, seed=1))
        text = model.encode_text(["the grasper"])
        padded = model.refer(frames[1], text)
        explicit = model.refer(frames[1], text, [frames[1].image_embed] * 2)
        other = model.refer(frames[1], text, [frames[0].image_embed])
    torch.testing.assert_close(padded.low_res_masks, explicit.low_res_masks)
    assert not torch.allclose(padded.low_res_masks, other.low_res_masks)


def test_gradients_reach_every_referring_parameter(model):
    model.train()
    try:
        frames = model.encode_frames(images(3, seed=2))
        outs = referring_stage(model, frames, ["the grasper", "the needle driver"])
        assert len(outs) == 3
        loss = sum(
            o.low_res_multimasks.sigmoid().mean()
            + o.multimask_iou.sum()
            + o.object_score_logits.sum()
            for o in outs
        )
        model.zero_grad()
        loss.backward()
    finally:
        model.eval()
    fusion = dict(model.cross_modal_fusion.named_parameters())
    missing = [k for k, p in fusion.items() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in fusion.values())
    assert sum(int(p.grad.abs().sum() > 0) for p in fusion.values()) > 0.9 * len(fusion)
    # The frozen CLIP tower is outside the module tree: no gradients, not in parameters().
    clip_params = {id(p) for p in model.text_encoder.parameters()}
    assert not clip_params & {id(p) for p in model.parameters()}
    assert all(p.grad is None for p in model.text_encoder.parameters())


# ---------------------------------------------------------------- keys and checkpoints


def test_key_layout(model):
    keys = set(model.state_dict())
    sam2_keys = set(SAM2Model(micro_config(SIZE)).state_dict())
    extra = keys - sam2_keys
    assert sam2_keys <= keys
    assert {k.split(".")[0] for k in extra} == {"cross_modal_fusion", "semantic_head"}
    for key in (
        "cross_modal_fusion.token_projection.layers.2.weight",
        "cross_modal_fusion.language_fusion_mlp.layers.0.bias",
        "cross_modal_fusion.layers.1.mamba_layers.1.mamba.A_s_log",
        "cross_modal_fusion.final_attn_token_to_image.q_proj.weight",
        "cross_modal_fusion.cls_token.weight",
        "cross_modal_fusion.temporal_pos_embed",
        "semantic_head.cls_token",
    ):
        assert key in keys, key
    assert not any(k.startswith(("text_encoder", "_text")) for k in keys)


def test_our_checkpoint_round_trips_strictly(model, tmp_path):
    path = tmp_path / "resurgsam2.pt"
    save_referring_checkpoint(model, path)
    rebuilt = build_resurgsam2(micro_config(SIZE), checkpoint=path, load_text_encoder=False)
    assert rebuilt.referring_cfg == model.referring_cfg  # from the checkpoint's metadata
    theirs, ours = rebuilt.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    # A plain SAM2 model refuses it, naming the referring keys.
    with pytest.raises(CheckpointMismatchError, match="unexpected keys: cross_modal_fusion"):
        load_checkpoint(SAM2Model(micro_config(SIZE)), path)


def test_released_layout_loads_strictly(model, tmp_path):
    released = to_resurgsam2_layout(model.state_dict())
    for key in (
        "token_projection.layers.0.weight",
        "sam_prompt_encoder.language_fusion_mlp.layers.2.bias",
        "cross_modal_fusion.transformer.layers.1.mamba_layers.0.mamba.A_s_log",
        "cross_modal_fusion.transformer.final_attn_token_to_image.v_proj.weight",
        "cross_modal_fusion.transformer.norm_final_attn.weight",
        "cross_modal_fusion.cls_token.weight",
        "cross_modal_fusion.temporal_pos_embed",
        "image_encoder.trunk.patch_embed.proj.weight",
    ):
        assert key in released, key
    assert not any(k.startswith("cross_modal_fusion.token_projection") for k in released)
    assert len(released) == len(model.state_dict())
    # The release skips saving the frozen CLIP model; one that kept it still loads.
    released["language_model.embeddings.token_embedding.weight"] = torch.zeros(3, 32)
    path = tmp_path / "released.pt"
    torch.save({"model": released}, path)
    fresh = ReSurgSAM2(micro_config(SIZE), model.referring_cfg)
    load_referring_checkpoint(fresh, path)
    ours, loaded = model.state_dict(), fresh.state_dict()
    assert loaded.keys() == ours.keys()
    assert all(torch.equal(loaded[k], ours[k]) for k in ours)

    broken = dict(released)
    del broken["cross_modal_fusion.transformer.layers.0.norm4.weight"]
    broken["cross_modal_fusion.transformer.extra.weight"] = torch.zeros(1)
    torch.save({"model": broken}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_referring_checkpoint(fresh, path)
    assert "1 missing keys: cross_modal_fusion.layers.0.norm4.weight" in str(err.value)
    assert "1 unexpected keys: cross_modal_fusion.transformer.extra.weight" in str(err.value)
    wrong = dict(released)
    wrong["token_projection.layers.0.weight"] = torch.zeros(5, 5)
    torch.save({"model": wrong}, path)
    with pytest.raises(
        CheckpointMismatchError, match="cross_modal_fusion.token_projection.layers.0.weight"
    ):
        load_referring_checkpoint(fresh, path)


def test_sam2_checkpoint_starts_a_referring_model(tmp_path):
    sam2 = SAM2Model(micro_config(SIZE))
    path = tmp_path / "sam2.pt"
    torch.save({"model": sam2.state_dict()}, path)
    fresh = ReSurgSAM2(micro_config(SIZE), tiny_referring_config())
    with pytest.raises(CheckpointMismatchError, match="missing keys: cross_modal_fusion"):
        load_referring_checkpoint(fresh, path)
    report = load_referring_checkpoint(fresh, path, init_from=NEW_MODULE_PREFIXES)
    assert report.initialised and all(
        k.startswith(("cross_modal_fusion.", "semantic_head.")) for k in report.initialised
    )
    assert torch.equal(fresh.no_mem_embed, sam2.no_mem_embed)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(model, clip_dir, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        model.encode_text([""])
    no_tokenizer = write_tiny_clip(tmp_path / "no-tokenizer", with_tokenizer=False)
    bare = ReSurgSAM2(micro_config(SIZE), tiny_referring_config(text_encoder=str(no_tokenizer)))
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        bare.load_text_encoder()
    with pytest.raises(RuntimeError, match="no text encoder"):
        bare.encode_text(["the grasper"])
    with pytest.raises(ValueError, match="ReferringConfig.text_encoder is not set"):
        ReSurgSAM2(micro_config(SIZE), tiny_referring_config()).load_text_encoder()
    wide = ReferringConfig(fusion=CSTMambaConfig.tiny().model_copy(update={"text_dim": 48}))
    with pytest.raises(ValueError, match="width is 32 but the fusion expects text_dim 48"):
        ReSurgSAM2(micro_config(SIZE), wide, text_encoder=TextEncoder.from_pretrained(clip_dir))
    with pytest.raises(ValueError, match="fusion.d_model 256 != the neck's d_model 32"):
        ReSurgSAM2(micro_config(SIZE), ReferringConfig())
    with pytest.raises(ValueError, match="no semantic_head"):
        ReSurgSAM2(micro_config(SIZE), tiny_referring_config(semantic_head=None))

    tracker = Tracker(model, {"name": "dlm"})
    state = tracker.start("bad", (SIZE, SIZE))
    with pytest.raises(ValueError, match="text for object 1 is empty"):
        tracker.add_text(state, 1, "   ")
    with pytest.raises(TypeError, match="must be a str"):
        tracker.add_text(state, 1, ["the grasper"])
    tracker.add_text(state, 1, "the grasper")
    with pytest.raises(ValueError, match="already has an object 1"):
        tracker.add_text(state, 1, "the needle driver")
    with pytest.raises(ValueError, match="lost_patience"):
        tracker.add_text(state, 2, "the needle driver", cifs={"lost_patience": 0})
    plain = Tracker(SAM2Model(micro_config(SIZE)).eval())
    with pytest.raises(TypeError, match="need a ReSurgSAM2 model"):
        plain.add_text(plain.start("plain", (SIZE, SIZE)), 1, "the grasper")


# ---------------------------------------------------------------- end to end


def test_referring_run_on_a_synthetic_clip(model):
    clip = generate_clip(
        SyntheticClipConfig(
            num_frames=14,
            height=96,
            width=96,
            smoke=False,
            motion_blur=False,
            leave_and_return=False,
            occlusion=False,
        ),  # fmt: skip
        seed=4,
    )
    tracker = Tracker(model, {"name": "dlm", "iou_gate": 0.0})
    state = tracker.start("synthetic", (96, 96), num_frames=clip.num_frames)
    expressions = {e.obj_id: e.text for e in clip.expressions}
    # Every frame is credible, and every tracked frame counts as seen.
    accept = CIFSConfig(score_threshold=0.0, iou_threshold=0.0, lost_score_threshold=0.0)
    for obj_id, text in expressions.items():
        tracker.add_text(state, obj_id, text, cifs=accept)
    # One more that is never seen while tracked: lost twice, then it searches again.
    tracker.add_text(
        state,
        99,
        "the grasper",
        cifs=accept.model_copy(update={"lost_score_threshold": 1.0, "lost_patience": 2}),
    )
    states: dict[int, list[str]] = {obj_id: [] for obj_id in state.obj_ids}
    for t in range(clip.num_frames):
        result = tracker.step(state, clip.frames[t])
        assert result.obj_ids == state.obj_ids
        for obj in result.objects:
            assert obj.mask.shape == (96, 96) and obj.mask.dtype == np.bool_
            assert obj.category in CATEGORIES and 0.0 < obj.category_probability <= 1.0
            states[obj.obj_id].append(obj.state)
        if t == 5:
            # Switched at frame 4 from one of frames 0-4; frames 1-4 after it are not memories.
            for obj_id in expressions:
                frames = sorted({e.frame_idx for e in state.objects[obj_id].policy.held_entries()})
                assert len(frames) == 2 and frames[0] <= 4 and frames[1] == 5
    for obj_id in expressions:
        assert states[obj_id] == ["searching"] * 4 + ["tracking"] * 10
    assert states[99] == ["searching"] * 4 + ["tracking", "lost", "searching"] + [
        "searching"
    ] * 4 + ["tracking", "lost", "searching"]
    assert state.nbytes() > 0
