"""The embedded, trainable CLIP text tower of ReSurgSAM2 (`ReferringConfig.text_tower`):
CLIP's token ids from the shipped vocabulary, feature shapes and causality, gradients in
training mode, cache invalidation when the weights move, strict checkpoints, starting from a
plain SAM2 checkpoint, and configuration errors."""

from __future__ import annotations

import pytest
import torch
from _referring_fixtures import CATEGORIES, tiny_referring_config

from surgray.model.checkpoints.referring_checkpoint import (
    build_resurgsam2,
    load_referring_checkpoint,
    save_referring_checkpoint,
)
from surgray.model.checkpoints.sam2_checkpoint import (
    NEW_MODULE_PREFIXES,
    CheckpointMismatchError,
    save_checkpoint,
)
from surgray.model.checkpoints.variants import micro_config
from surgray.model.referring.config import ReferringConfig
from surgray.model.referring.cstmamba import CSTMambaConfig
from surgray.model.referring.resurgsam2 import ReSurgSAM2, referring_stage
from surgray.model.referring.semantic_head import SemanticHeadConfig
from surgray.model.sam2.network import SAM2Model
from surgray.model.text.tower import (
    TextTowerConfig,
    build_text_tower,
    load_vocab_tokenizer,
    shipped_vocab_path,
)

SIZE = 64
SOT, EOT = 49406, 49407


def tower_model(seed: int = 0, **tower) -> ReSurgSAM2:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    referring = tiny_referring_config(text_tower=TextTowerConfig(**tower))
    return ReSurgSAM2(micro_config(SIZE), referring).eval()


def images(count: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, SIZE, SIZE, generator=gen)


def refer_loss(model: ReSurgSAM2, texts: list[str]) -> torch.Tensor:
    frames = model.encode_frames(images(2, seed=1))
    outs = referring_stage(model, frames, texts)
    return sum(o.low_res_multimasks.sigmoid().mean() + o.object_score_logits.sum() for o in outs)


# ---------------------------------------------------------------- tokenizer and tower


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # CLIP's tokenization, as in OpenAI's CLIP README.
        ("a photo of a cat", [SOT, 320, 1125, 539, 320, 2368, EOT]),
        # Worked out with a separate BPE over the same merges file (lower-cased, punctuation
        # split off, greedy lowest-rank merges).
        ("the needle driver", [SOT, 518, 19886, 4383, EOT]),
        ("Laparoscopic grasper, left!", [SOT, 572, 17429, 23869, 782, 15313, 267, 1823, 256, EOT]),
    ],
)
def test_shipped_vocab_gives_clip_ids(text, ids):
    tokenizer = load_vocab_tokenizer(str(shipped_vocab_path()))
    assert len(tokenizer) == 49408
    assert tokenizer(text)["input_ids"] == ids
    # Built once per process: the 49k-merge file takes seconds to parse.
    assert load_vocab_tokenizer(str(shipped_vocab_path())) is tokenizer


def test_tower_shapes_padding_and_causality():
    torch.manual_seed(0)
    tower = build_text_tower(TextTowerConfig(width=32, heads=4, projection_dim=16)).eval()
    assert tower.trainable and tower.width == 32 and tower.context_length == 32
    out = tower.encode(["a photo of a cat", "a photo"])
    assert out.tokens.shape == (2, 7, 32) and out.pooled.shape == (2, 32)
    assert out.projected.shape == (2, 16)
    assert out.mask.sum(1).tolist() == [7, 4]
    assert torch.equal(out.tokens[1, 4:], torch.zeros(3, 32))
    torch.testing.assert_close(out.pooled[1], out.tokens[1, 3])  # the end-of-text state
    # Causal like CLIP: start, "a", "photo" see only themselves and what precedes them.
    torch.testing.assert_close(out.tokens[0, :3], out.tokens[1, :3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.tokens[0, 3], out.tokens[1, 3])


def test_long_text_truncated_to_the_context():
    tower = build_text_tower(TextTowerConfig(context_length=8)).eval()
    with pytest.warns(UserWarning, match="more than the text encoder's context of 8"):
        out = tower.encode(["one two three four five six seven eight"])
    assert out.tokens.shape[1] == 8


# ---------------------------------------------------------------- training and caches


def test_training_mode_gives_gradients_to_the_tower_and_skips_caches():
    model = tower_model()
    assert {n.split(".")[0] for n, _ in model.named_parameters()} >= {"text_tower"}
    model.train()
    loss = refer_loss(model, ["the grasper", "the needle driver"])
    loss = loss + model.category_embeddings().square().sum()
    loss.backward()
    params = {n: p for n, p in model.named_parameters() if n.startswith("text_tower.")}
    assert len(params) == 36
    assert all(p.requires_grad for p in params.values())
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    token_grad = params["text_tower.model.embeddings.token_embedding.weight"].grad
    # "the grasper", "the needle driver" and the categories: the = 518, grasper = 782 15313,
    # needle driver = 19886 4383 (same separate BPE as above).
    used = {SOT, EOT, 518, 782, 15313, 19886, 4383}
    assert set(torch.nonzero(token_grad.abs().sum(1)).flatten().tolist()) == used
    assert model.text_tower.cache_info().size == 0 and model._category_cache is None


def test_eval_cache_is_dropped_when_the_weights_move():
    model = tower_model(seed=1)
    tower = model.text_tower
    before = model.encode_text(["the grasper"]).tokens
    again = model.encode_text(["the grasper"]).tokens
    assert tower.cache_info().hits == 1 and not before.requires_grad
    torch.testing.assert_close(again, before)
    categories = model.category_embeddings()
    assert model.category_embeddings() is categories  # cached in eval mode

    model.train()
    optimizer = torch.optim.SGD(model.text_tower.parameters(), lr=1.0)
    refer_loss(model, ["the grasper"]).backward()
    optimizer.step()
    model.eval()
    after = model.encode_text(["the grasper"]).tokens
    with torch.no_grad():
        model.train()
        fresh = model.encode_text(["the grasper"]).tokens
        model.eval()
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh)

    # An in-place update without leaving eval mode is noticed too (weights_version).
    cached = model.encode_text(["the grasper"]).tokens
    new_categories = model.category_embeddings()
    assert not torch.allclose(new_categories, categories)
    with torch.no_grad():
        tower.model.final_layer_norm.bias.add_(1.0)
    torch.testing.assert_close(model.encode_text(["the grasper"]).tokens, cached + 1.0)
    torch.testing.assert_close(model.category_embeddings(), new_categories + 1.0)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trips_strictly_with_the_tower(tmp_path):
    model = tower_model(seed=2, projection_dim=None)
    path = tmp_path / "referring.pt"
    save_referring_checkpoint(model, path)
    saved = torch.load(path, weights_only=False)["model"]
    assert "text_tower.model.embeddings.token_embedding.weight" in saved
    assert saved["text_tower.model.embeddings.token_embedding.weight"].shape == (49408, 32)

    torch.manual_seed(99)
    loaded = build_resurgsam2(micro_config(SIZE), checkpoint=path)
    assert loaded.referring_cfg == model.referring_cfg
    assert loaded.referring_cfg.text_tower == TextTowerConfig()
    assert loaded.load_text_encoder() is loaded.text_tower is loaded.text_encoder
    texts = ["the grasper", "the needle driver"]
    with torch.no_grad():
        frames = model.encode_frames(images(1, seed=3))
        expected = model.refer(frames[0], model.encode_text(texts))
        got = loaded.refer(frames[0], loaded.encode_text(texts))
    torch.testing.assert_close(got.low_res_masks, expected.low_res_masks)
    torch.testing.assert_close(loaded.category_embeddings(), model.category_embeddings())

    # A model without a tower refuses the checkpoint's text_tower keys, naming them.
    plain = ReSurgSAM2(micro_config(SIZE), tiny_referring_config())
    with pytest.raises(CheckpointMismatchError, match="unexpected keys: text_tower"):
        load_referring_checkpoint(plain, path)


def test_plain_sam2_checkpoint_starts_a_fresh_tower(tmp_path):
    sam2 = SAM2Model(micro_config(SIZE))
    path = tmp_path / "sam2.pt"
    save_checkpoint(sam2, path)
    fresh = tower_model(seed=4)
    with pytest.raises(CheckpointMismatchError, match="text_tower"):
        load_referring_checkpoint(fresh, path, init_from=("cross_modal_fusion", "semantic_head"))
    report = load_referring_checkpoint(fresh, path, init_from=NEW_MODULE_PREFIXES)
    tower_keys = {k for k in fresh.state_dict() if k.startswith("text_tower.")}
    assert tower_keys and tower_keys <= set(report.initialised)
    assert torch.equal(fresh.no_mem_embed, sam2.no_mem_embed)
    # CLIP's initialisation (normal, std 0.02) is left in place.
    std = fresh.text_tower.model.embeddings.token_embedding.weight.std().item()
    assert 0.018 < std < 0.022


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 30, "heads": 4}, "width 30 is not divisible by heads 4"),
        ({"context_length": 4}, "context_length must be >= 8"),
        ({"layers": 0}, "layers must be >= 1"),
        ({"projection_dim": 0}, "projection_dim must be >= 1"),
        ({"depth": 2}, "depth"),
    ],
)
def test_tower_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        TextTowerConfig(**fields)


def test_referring_config_errors(tmp_path):
    with pytest.raises(ValueError, match="text_encoder and text_tower are both set"):
        ReferringConfig(text_encoder="clip", text_tower=TextTowerConfig())
    wide = tiny_referring_config(text_tower=TextTowerConfig(width=64))
    with pytest.raises(ValueError, match="fusion.text_dim 32 != text_tower.width 64"):
        ReSurgSAM2(micro_config(SIZE), wide)
    semantic = SemanticHeadConfig(d_model=32, memory_dim=16, text_dim=32, num_heads=2, mlp_dim=64)
    projected = ReferringConfig(
        fusion=CSTMambaConfig.tiny(),
        semantic_head=semantic,
        categories=CATEGORIES,
        text_tower=TextTowerConfig(projection_dim=16),
    )
    with pytest.raises(ValueError, match="semantic_head.text_dim 32 != text_tower.projection_dim"):
        ReSurgSAM2(micro_config(SIZE), projected)
    missing = tiny_referring_config(text_tower=TextTowerConfig(vocab=str(tmp_path / "nope.gz")))
    with pytest.raises(FileNotFoundError, match="text_tower.vocab"):
        ReSurgSAM2(micro_config(SIZE), missing)
    model = tower_model()
    with pytest.raises(ValueError, match="embeds its own text tower"):
        model.text_encoder = build_text_tower(TextTowerConfig())


def test_tower_builds_its_tokenizer_only_when_text_arrives():
    from surgray.model.text.encoder import DeferredTokenizer
    from surgray.model.text.open_clip_format import bpe_vocab_layout

    tower = build_text_tower(TextTowerConfig())
    assert isinstance(tower._tokenizer, DeferredTokenizer)  # a mask-only job never builds it
    tokenizer = load_vocab_tokenizer(str(shipped_vocab_path()))
    layout = bpe_vocab_layout(shipped_vocab_path())
    # CLIP's vocabulary: 49408 tokens, start- and end-of-text last.
    assert (layout.size, layout.bos_token_id, layout.eos_token_id) == (49408, 49406, 49407)
    assert (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id) == (49408, 49406, 49407)
    assert tower.model.config.vocab_size == 49408
    tower.encode(["needle driver"])
    assert tower.tokenizer is tokenizer
