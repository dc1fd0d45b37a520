"""One training clip through the micro model: losses, gradients, prompts, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgray.model.checkpoints.variants import get_variant
from surgray.model.sam2.memory_types import MemoryEntry
from surgray.model.sam2.network import SAM2Model
from surgray.train.clip_data import TrainingClip, load_clip, synthetic_videos
from surgray.train.clip_memory import ClipMemory
from surgray.train.config import SyntheticSourceSection
from surgray.train.losses import SAM2Loss
from surgray.train.optim import OptimConfig, apply_freeze
from surgray.train.prompts import PromptSimConfig
from surgray.train.samplers import ClipSpec
from surgray.train.step import run_clip

SIZE = 64
POINTS = PromptSimConfig(prob_point_input=1.0, prob_box_input=0.0, num_correction_clicks=2)
MASKS = PromptSimConfig(prob_point_input=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro(**changes) -> SAM2Model:
    torch.manual_seed(0)
    return SAM2Model(get_variant("micro", image_size=SIZE, **changes))


@pytest.fixture(scope="module")
def video():
    section = SyntheticSourceSection(
        train_videos=1, num_frames=10, height=SIZE, width=SIZE, vary=False
    )
    return synthetic_videos(section, "train")[0]


def clip_of(video, frames, kind="sam2", long_term=()) -> TrainingClip:
    spec = ClipSpec(kind, 0, tuple(frames), long_term=long_term)
    clip = load_clip(video, spec, SIZE, 2, np.random.default_rng(0))
    assert clip is not None and clip.num_objects == 2
    return clip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads_by_module(model: SAM2Model) -> dict[str, bool]:
    """Top-level module/parameter name -> whether any of its parameters got a nonzero grad."""
    seen: dict[str, bool] = {}
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        got = param.grad is not None and bool(param.grad.abs().sum() > 0)
        seen[top] = seen.get(top, False) or got
    return seen


def test_loss_is_finite_and_counts_every_decoder_pass(video):
    model = micro()
    clip = clip_of(video, range(4))
    out = run_clip(model, clip, POINTS, SAM2Loss(), gen())
    assert out.plan.use_point_input and out.plan.init_cond_frames == [0]
    # One pass per frame plus 2 correction clicks on each frame to correct.
    assert out.decoder_passes == 4 + 2 * len(out.plan.frames_to_correct)
    assert len(out.predictions) == 4
    for value in out.loss.as_floats().values():
        assert np.isfinite(value)
    assert out.final_masks.shape == (4, 2, SIZE, SIZE) and out.final_masks.dtype == torch.bool
    again = run_clip(model, clip, POINTS, SAM2Loss(), gen())
    # The generator fixes the prompts, so the same clip gives the same loss.
    assert float(again.loss.total.detach()) == float(out.loss.total.detach())


def test_mask_prompt_is_the_first_frame_output(video):
    model = micro()
    clip = clip_of(video, range(3))
    out = run_clip(model, clip, MASKS, SAM2Loss(), gen())
    assert not out.plan.use_point_input and out.plan.frames_to_correct == []
    assert out.decoder_passes == 3
    assert torch.equal(out.final_masks[0], clip.masks[0])


def test_gradients_reach_the_trained_modules(video):
    model = micro()
    # Pointers come from the decoder only for objects it judges present; an untrained object
    # head judges them absent and hands out `no_obj_ptr`, so make it say "present".
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    clip = clip_of(video, range(4))
    out = run_clip(model, clip, MASKS, SAM2Loss(), gen())
    out.loss.total.backward()
    got = grads_by_module(model)
    for name in (
        "image_encoder",
        "sam_prompt_encoder",
        "sam_mask_decoder",
        "memory_attention",
        "memory_encoder",  # through the memories read by later frames
        "maskmem_tpos_enc",
        "obj_ptr_proj",
        "obj_ptr_tpos_proj",
        "mask_downsample",  # the mask prompt's pointer
    ):
        assert got[name], f"{name} got no gradient"


def test_frozen_modules_get_no_gradient(video):
    model = micro()
    frozen = apply_freeze(
        model, OptimConfig(frozen_prefixes=("image_encoder.", "sam_prompt_encoder."))
    )
    assert frozen and all(n.startswith(("image_encoder.", "sam_prompt_encoder.")) for n in frozen)
    out = run_clip(model, clip_of(video, range(3)), POINTS, SAM2Loss(), gen())
    out.loss.total.backward()
    for name, param in model.named_parameters():
        if name.startswith(("image_encoder.", "sam_prompt_encoder.")):
            assert param.grad is None, name
    got = grads_by_module(model)
    assert got["sam_mask_decoder"] and got["memory_attention"] and got["memory_encoder"]
    assert got["no_mem_embed"]  # the clicked first frame is decoded without memory


def test_long_term_embeddings_train_on_hybrid_clips_only(video):
    model = micro(memory={"num_long_term_embeddings": 2})
    hybrid = clip_of(video, (0, 2, 4, 7, 8), kind="hybrid", long_term=(1, 2))
    out = run_clip(model, hybrid, MASKS, SAM2Loss(), gen())
    out.loss.total.backward()
    assert model.long_term_tpos_enc.grad is not None
    assert bool((model.long_term_tpos_enc.grad.abs().flatten(1).sum(1) > 0).all())
    model.zero_grad(set_to_none=True)
    out = run_clip(model, clip_of(video, range(5)), MASKS, SAM2Loss(), gen())
    out.loss.total.backward()
    assert model.long_term_tpos_enc.grad is None


def test_a_few_steps_reduce_the_loss_of_a_fixed_clip(video):
    model = micro()
    clip = clip_of(video, range(3))
    prompts = POINTS.model_copy(update={"num_correction_clicks": 1})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = run_clip(model, clip, prompts, SAM2Loss(), gen())
        optimizer.zero_grad()
        out.loss.total.backward()
        optimizer.step()
        losses.append(float(out.loss.total.detach()))
    assert all(np.isfinite(losses))
    # The first loss holds the "object absent" placeholder logits of an untrained object
    # head; from the second step on the loss must fall.
    assert losses[-1] < 0.85 * losses[1]


def test_referring_clips_need_a_stage_and_use_its_anchor_as_memory(video):
    model = micro()
    spec = ClipSpec("referring", 0, (0, 1, 2, 3, 4), context=(0, 1), anchor=2, object_frame=2)
    clip = load_clip(video, spec, SIZE, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="referring stage"):
        run_clip(model, clip, POINTS, SAM2Loss(), gen())

    calls = []

    def promptless_stage(model, frames, expressions):
        # The SAM heads without any prompt: enough to exercise the wiring of the clip.
        calls.append((len(frames), list(expressions)))
        outputs = []
        for feats in frames:
            feats = feats.expand(len(expressions))
            fused = model.memory_readout.condition(
                feats.image_embed, feats.image_pos, [None] * len(expressions)
            )
            outputs.append(model.sam_heads.run(fused, feats.high_res, None, None, False))
        return outputs

    out = run_clip(model, clip, POINTS, SAM2Loss(), gen(), referring=promptless_stage)
    assert calls == [(3, list(clip.expressions))]
    assert all(clip.expressions)
    assert out.plan is None and out.decoder_passes == 5 and len(out.predictions) == 5
    out.loss.total.backward()
    assert grads_by_module(model)["memory_attention"]  # frames after the anchor read its memory


def _entry(frame: int, conditioning: bool = False) -> MemoryEntry:
    return MemoryEntry(
        frame, torch.full((16, 4, 4), float(frame)), torch.zeros(32), conditioning, 1.0, 1.0
    )


def test_clip_memory_adds_long_term_slots_after_sam2_selection():
    memory = ClipMemory(get_variant("micro", image_size=SIZE), num_objects=1, num_frames=8)
    memory.add([_entry(0, conditioning=True)])
    memory.add([_entry(1)], long_term=True)
    memory.add([_entry(2)], long_term=True)
    first = memory.select(3)[0]
    assert [(m.entry.frame_idx, m.temporal_index, m.long_term_slot) for m in first.spatial] == [
        (0, 6, None),
        (1, 6, 0),
        (2, 6, 1),
    ]
    assert [(p.entry.frame_idx, p.temporal_offset) for p in first.pointers] == [(0, 3)]
    memory.add([_entry(3)])
    second = memory.select(4)[0]
    assert [(m.entry.frame_idx, m.temporal_index, m.long_term_slot) for m in second.spatial] == [
        (0, 6, None),
        (3, 0, None),
        (1, 6, 0),
        (2, 6, 1),
    ]
    assert [(p.entry.frame_idx, p.temporal_offset) for p in second.pointers] == [(0, 4), (3, 1)]
    # Training reads pointers of conditioning frames ahead in time too (SAM2 in training mode).
    memory.add([_entry(6, conditioning=True)])
    assert (6, -1) in [(p.entry.frame_idx, p.temporal_offset) for p in memory.select(5)[0].pointers]
    with pytest.raises(ValueError, match="2 memory entries for 1 objects"):
        memory.add([_entry(4), _entry(4)])
