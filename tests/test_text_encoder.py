"""Frozen CLIP text encoder: local and object-store loading, cache, truncation, open_clip mapping."""

from __future__ import annotations

import copy
import gzip
import json
import math
import pickle
import threading
import time

import pytest
import torch
from torch.nn import functional as F

from surgray.model.text.encoder import TextEncoder

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MERGES = ["i s</w>", "t h", "th e</w>", "g r", "gr a", "s p", "sp e", "spe r</w>"]


def _write_vocab(directory) -> dict[str, int]:
    """A tiny CLIP BPE vocabulary: letters, end-of-word letters, a few merges, specials last."""
    vocab: dict[str, int] = {}
    for token in list(LETTERS) + [c + "</w>" for c in LETTERS]:
        vocab[token] = len(vocab)
    for merge in MERGES:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return vocab


def _tiny_config(vocab):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPTextModel

    directory = tmp_path_factory.mktemp("clip")
    vocab = _write_vocab(directory)
    torch.manual_seed(0)
    CLIPTextModel(_tiny_config(vocab)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reference(clip_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    return (
        CLIPTextModel.from_pretrained(clip_dir, local_files_only=True).eval(),
        CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True),
    )


def test_encode_matches_transformers_per_text(clip_dir, reference):
    model, tokenizer = reference
    encoder = TextEncoder.from_pretrained(clip_dir)
    texts = ["the grasper is", "is"]
    feats = encoder.encode(texts)
    assert feats.tokens.shape == (2, 6, 32)  # <bos> the gra sper is <eos>
    assert feats.pooled.shape == (2, 32)
    assert feats.projected is None
    for i, text in enumerate(texts):
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model(input_ids=ids)
        n = ids.shape[1]
        assert feats.mask[i].sum() == n
        torch.testing.assert_close(feats.tokens[i, :n], out.last_hidden_state[0])
        torch.testing.assert_close(feats.pooled[i], out.pooler_output[0])
        assert (feats.tokens[i, n:] == 0).all()


def test_tokenizer_ids_by_hand(clip_dir):
    encoder = TextEncoder.from_pretrained(clip_dir)
    vocab = json.loads((clip_dir / "vocab.json").read_text())
    ids = encoder.tokenizer(["the grasper is"])["input_ids"][0]
    expected = ["<|startoftext|>", "the</w>", "gra", "sper</w>", "is</w>", "<|endoftext|>"]
    assert ids == [vocab[t] for t in expected]


def test_cache_hits_and_lru_eviction(clip_dir):
    encoder = TextEncoder.from_pretrained(clip_dir, cache_size=2)
    first = encoder.encode(["the", "is"])
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.size) == (0, 2, 2)
    again = encoder.encode(["is", "the", "is"])
    assert (encoder.cache_info().hits, encoder.cache_info().misses) == (3, 2)
    assert torch.equal(again.tokens[1], first.tokens[0])
    encoder.encode(["grasper"])  # evicts the least recently used entry ("the")
    encoder.encode(["the"])
    info = encoder.cache_info()
    assert (info.hits, info.misses, info.size) == (3, 4, 2)


def test_many_new_texts_in_one_call_survive_a_small_cache(clip_dir):
    encoder = TextEncoder.from_pretrained(clip_dir, cache_size=1)
    feats = encoder.encode(["the", "is", "grasper"])
    assert feats.tokens.shape[0] == 3 and encoder.cache_info().size == 1


def test_long_text_is_truncated_with_a_warning(clip_dir, reference):
    model, tokenizer = reference
    encoder = TextEncoder.from_pretrained(clip_dir)
    text = " ".join(["is"] * 100)  # 100 words -> 102 tokens with start/end
    with pytest.warns(UserWarning, match="102 tokens.*context of 77"):
        feats = encoder.encode([text])
    assert feats.mask.shape == (1, 77) and feats.mask.all()
    ids = [tokenizer.bos_token_id] + [tokenizer.convert_tokens_to_ids("is</w>")] * 75
    ids = torch.tensor([ids + [tokenizer.eos_token_id]])
    with torch.no_grad():
        out = model(input_ids=ids)
    torch.testing.assert_close(feats.pooled[0], out.last_hidden_state[0, -1])


def test_long_text_raises_when_asked(clip_dir):
    encoder = TextEncoder.from_pretrained(clip_dir, overflow="error")
    with pytest.raises(ValueError, match="more than the text encoder's context"):
        encoder.encode(["is " * 80])


@pytest.mark.parametrize(
    "texts, error, message",
    [
        ([], ValueError, "texts is empty"),
        (["the", "  "], ValueError, r"texts\[1\] is empty"),
        (["the", 3], TypeError, r"texts\[1\] is int"),
        ("the", TypeError, "list of strings"),
    ],
)
def test_bad_texts(clip_dir, texts, error, message):
    encoder = TextEncoder.from_pretrained(clip_dir)
    with pytest.raises(error, match=message):
        encoder.encode(texts)


def test_directory_errors(clip_dir, tmp_path):
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((clip_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        TextEncoder.from_pretrained(no_tok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoder.from_pretrained(tmp_path)


def test_frozen(clip_dir):
    encoder = TextEncoder.from_pretrained(clip_dir)
    encoder.train()
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.encode(["the"]).tokens.dtype == torch.float32
    encoder.double()  # moving the module drops features cached in the old dtype/device
    assert encoder.cache_info().size == 0
    assert encoder.encode(["the"]).tokens.dtype == torch.float64
    with pytest.raises(ValueError, match="cache_size"):
        TextEncoder.from_pretrained(clip_dir, cache_size=0)


def test_full_clip_checkpoint_gives_projection(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    vocab = _write_vocab(tmp_path)
    text_cfg = _tiny_config(vocab).to_dict()
    vision_cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=16))
    clip.save_pretrained(tmp_path)
    encoder = TextEncoder.from_pretrained(tmp_path)
    feats = encoder.encode(["the grasper"])
    ids = encoder.tokenizer(["the grasper"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        pooled = clip.text_model(input_ids=ids).pooler_output
        expected = clip.text_projection(pooled)
    torch.testing.assert_close(feats.pooled, pooled)
    torch.testing.assert_close(feats.projected, expected)


def test_from_object_storage(clip_dir, s3_server, tmp_path):
    bucket = s3_server.make_bucket("text-encoder")
    fs = s3_server.filesystem()
    for path in clip_dir.iterdir():
        fs.put_file(str(path), f"{bucket}/clip/{path.name}")
    remote = TextEncoder.from_pretrained(
        f"{bucket}/clip", storage=s3_server.storage, cache_dir=tmp_path
    )
    local = TextEncoder.from_pretrained(clip_dir)
    torch.testing.assert_close(
        remote.encode(["the grasper"]).tokens, local.encode(["the grasper"]).tokens
    )
    # Copied once: a second load comes from the local copy even with the bucket emptied.
    assert [p.name.startswith("surgray-text-encoder-") for p in tmp_path.iterdir()] == [True]
    fs.rm(f"{bucket}/clip", recursive=True)
    again = TextEncoder.from_pretrained(
        f"{bucket}/clip", storage=s3_server.storage, cache_dir=tmp_path
    )
    assert again.cache_info().size == 0
    with pytest.raises(FileNotFoundError, match="not a directory"):
        TextEncoder.from_pretrained(
            f"{bucket}/nothing", storage=s3_server.storage, cache_dir=tmp_path
        )


# ------------------------------------------------------------------- open_clip


def _open_clip_state_dict(vocab_size, width=32, layers=2, ctx=77, embed=16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "token_embedding.weight": rnd(vocab_size, width),
        "positional_embedding": rnd(ctx, width),
        "ln_final.weight": 1 + rnd(width),
        "ln_final.bias": rnd(width),
        "text_projection": rnd(width, embed),
        "logit_scale": torch.tensor(math.log(100.0)),
        "visual.proj": rnd(4, 4),  # vision tower keys are ignored
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({
            p + "ln_1.weight": 1 + rnd(width), p + "ln_1.bias": rnd(width),
            p + "attn.in_proj_weight": rnd(3 * width, width), p + "attn.in_proj_bias": rnd(3 * width),
            p + "attn.out_proj.weight": rnd(width, width), p + "attn.out_proj.bias": rnd(width),
            p + "ln_2.weight": 1 + rnd(width), p + "ln_2.bias": rnd(width),
            p + "mlp.c_fc.weight": rnd(4 * width, width), p + "mlp.c_fc.bias": rnd(4 * width),
            p + "mlp.c_proj.weight": rnd(width, 4 * width), p + "mlp.c_proj.bias": rnd(width),
        })  # fmt: skip
    return sd


def _open_clip_forward(sd, ids, heads, activation):
    """open_clip's text tower in plain torch: ids padded with 0 to the context, causal mask."""
    ctx, width = sd["positional_embedding"].shape
    n = ids.shape[1]
    padded = F.pad(ids, (0, ctx - n))
    x = sd["token_embedding.weight"][padded] + sd["positional_embedding"]
    causal = torch.full((ctx, ctx), float("-inf")).triu(1)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    hd = width // heads
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
        q, k, v = (t.unflatten(-1, (heads, hd)).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + causal, dim=-1) @ v
        att = att.transpose(1, 2).flatten(2)
        x = x + att @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h) if activation == "quick_gelu" else F.gelu(h)
        x = x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])
    pooled = x[torch.arange(x.shape[0]), padded.argmax(-1)]  # end-of-text has the largest id
    return x[:, :n], pooled, pooled @ sd["text_projection"]


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_open_clip_mapping_equals_open_clip_forward(tmp_path, activation):
    vocab = _write_vocab(tmp_path)
    sd = _open_clip_state_dict(len(vocab))
    encoder = TextEncoder.from_open_clip_state_dict(
        sd, tmp_path, num_heads=2, activation=activation
    )
    texts = ["the grasper is", "spe"]
    feats = encoder.encode(texts)
    for i, text in enumerate(texts):
        ids = encoder.tokenizer([text], return_tensors="pt")["input_ids"]
        tokens, pooled, projected = _open_clip_forward(sd, ids, heads=2, activation=activation)
        n = ids.shape[1]
        torch.testing.assert_close(feats.tokens[i : i + 1, :n], tokens, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(feats.pooled[i], pooled[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(feats.projected[i], projected[0], rtol=1e-4, atol=1e-5)


def test_open_clip_prefixed_text_tower_and_default_heads(tmp_path):
    vocab = _write_vocab(tmp_path)
    sd = {"text." + k: v for k, v in _open_clip_state_dict(len(vocab), width=64).items()}
    encoder = TextEncoder.from_open_clip_state_dict(sd, tmp_path)
    assert encoder.model.config.num_attention_heads == 1  # open_clip's width // 64
    ids = encoder.tokenizer(["the"], return_tensors="pt")["input_ids"]
    plain = {k[5:]: v for k, v in sd.items()}
    tokens, _, _ = _open_clip_forward(plain, ids, heads=1, activation="quick_gelu")
    torch.testing.assert_close(encoder.encode(["the"]).tokens, tokens, rtol=1e-4, atol=1e-5)


def test_open_clip_bpe_file_gives_open_clip_ids(tmp_path):
    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("\n".join(['"bpe_simple_vocab_16e6.txt#version: 0.2', "i s</w>"]) + "\n")
    sd = _open_clip_state_dict(256 + 256 + 1 + 2)
    encoder = TextEncoder.from_open_clip_state_dict(sd, bpe, num_heads=2)
    # Worked out by hand: 'a' is printable byte 97, index 97 - 33 = 64 among the byte symbols,
    # so 'a</w>' is 256 + 64; the one merge 'is</w>' is 512; start/end of text are 513/514.
    assert encoder.tokenizer(["is a"])["input_ids"][0] == [513, 512, 320, 514]


def test_open_clip_mismatches_are_named(tmp_path):
    vocab = _write_vocab(tmp_path)
    sd = _open_clip_state_dict(len(vocab) + 1)
    with pytest.raises(ValueError, match="rows but the vocabulary has"):
        TextEncoder.from_open_clip_state_dict(sd, tmp_path, num_heads=2)
    sd = _open_clip_state_dict(len(vocab))
    sd["transformer.resblocks.0.ls_1.gamma"] = torch.ones(32)
    with pytest.raises(KeyError, match="ls_1.gamma"):
        TextEncoder.from_open_clip_state_dict(sd, tmp_path, num_heads=2)
    with pytest.raises(KeyError, match="token_embedding"):
        TextEncoder.from_open_clip_state_dict({"visual.proj": torch.ones(1)}, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder.from_open_clip_state_dict(sd, tmp_path / "nope.txt.gz")


class _CountingTokenizer:
    """The real tokenizer, slowed down, counting how many calls are inside it at once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.inside, self.most = tokenizer, 0, 0

    def __call__(self, *args, **kwargs):
        self.inside += 1
        self.most = max(self.most, self.inside)
        time.sleep(0.02)  # lets another thread in, were there no lock
        try:
            return self.tokenizer(*args, **kwargs)
        finally:
            self.inside -= 1


def test_encode_from_several_threads_runs_one_at_a_time_and_copies_get_their_own_lock(clip_dir):
    encoder = TextEncoder.from_pretrained(clip_dir, cache_size=2)  # evictions while racing
    texts = ["the grasper", "is", "the super", "grasper is", "the", "super is"]
    expected = {t: encoder.encode([t]).pooled[0] for t in texts}
    encoder._cache.clear()
    counting = _CountingTokenizer(encoder.tokenizer)
    encoder._tokenizer = counting
    got, errors = {}, []

    def encode(text: str) -> None:
        try:
            for _ in range(3):
                got[text] = encoder.encode([text, "is"]).pooled[0]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=encode, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert counting.most == 1  # 6 threads, never two in the tokenizer at once
    for text in texts:
        torch.testing.assert_close(got[text], expected[text])
    twin = copy.deepcopy(encoder)  # fast mode deep-copies the model: a lock of its own
    assert twin._lock is not encoder._lock
    assert pickle.loads(pickle.dumps(twin))._lock is not twin._lock
