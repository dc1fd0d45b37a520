"""open_clip's CLIP text tower and BPE vocabulary, mapped onto transformers' CLIP classes.

open_clip cannot be imported without torchvision, so its checkpoints are read by key name:
`token_embedding`, `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_*,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final` and `text_projection` become the
matching `CLIPTextModel` parameters (the fused q/k/v projection is split in three), and the BPE
merges file becomes a `CLIPTokenizer` with open_clip's token ids. The architectures are the same
pre-LN causal transformer, so the mapped model computes what open_clip computes (see
tests/test_text_encoder.py, which checks it against a plain-torch forward of the open_clip tower).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgray.model.text.files import require_tokenizer_files

# open_clip's BPE file holds more merges than CLIP's vocabulary uses: 49152 ids minus 256 bytes,
# 256 end-of-word bytes and 2 special tokens.
_OPEN_CLIP_MERGES = 49152 - 256 - 2


def tokenizer_from_vocab(vocab_path: Path):
    """CLIPTokenizer from a transformers tokenizer directory or open_clip's BPE merges file."""
    from transformers import CLIPTokenizer

    if vocab_path.is_dir():
        require_tokenizer_files(vocab_path)
        return CLIPTokenizer.from_pretrained(str(vocab_path), local_files_only=True)
    merges = _read_merges(vocab_path)
    # open_clip's id order: byte symbols, the same with the end-of-word mark, merges, specials.
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])


def _read_merges(vocab_path: Path) -> list[str]:
    if not vocab_path.is_file():
        raise FileNotFoundError(f"vocabulary {vocab_path} does not exist")
    opener = gzip.open if vocab_path.suffix == ".gz" else open
    with opener(vocab_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [m for m in lines[1 : 1 + _OPEN_CLIP_MERGES] if m.strip()]
    if not merges or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{vocab_path} is not an open_clip BPE file (one 'a b' merge a line)")
    return merges


@dataclass(frozen=True)
class VocabLayout:
    """Size and special ids of an open_clip BPE vocabulary, read without building a tokenizer."""

    size: int
    bos_token_id: int
    eos_token_id: int


def bpe_vocab_layout(vocab_path: Path) -> VocabLayout:
    """What `tokenizer_from_vocab` would give for an open_clip merges file: 256 byte symbols,
    the same with the end-of-word mark, one token per merge, then start- and end-of-text."""
    size = 2 * 256 + len(_read_merges(vocab_path)) + 2
    return VocabLayout(size=size, bos_token_id=size - 2, eos_token_id=size - 1)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (printable bytes first, the rest shifted)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_IGNORED_TOP = ("logit_scale", "logit_bias", "attn_mask")
_BLOCK_KEYS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")


def clip_text_config(
    *,
    vocab_size: int,
    width: int,
    mlp_width: int,
    layers: int,
    heads: int,
    context_length: int,
    activation: str,
    bos_token_id: int,
    eos_token_id: int,
    projection_dim: int,
):
    """transformers' CLIPTextConfig for a CLIP text tower of these sizes (padding with the
    end-of-text token, as CLIP's tokenizer does)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=mlp_width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=context_length,
        hidden_act=activation,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        projection_dim=projection_dim,
    )


def build_clip_text_model(
    state_dict: dict[str, torch.Tensor],
    num_heads: int | None,
    activation: str,
    bos_token_id: int,
    eos_token_id: int,
    vocab_size: int,
):
    """A CLIPTextModel (and the text projection, if any) holding an open_clip text tower."""
    from transformers import CLIPTextModel

    sd = _text_tower_keys(state_dict)
    for needed in ("token_embedding.weight", "positional_embedding", "ln_final.weight"):
        if needed not in sd:
            raise KeyError(f"open_clip state dict has no {needed!r}: not a CLIP text tower")
    rows, width = sd["token_embedding.weight"].shape
    if rows != vocab_size:
        raise ValueError(
            f"token_embedding has {rows} rows but the vocabulary has {vocab_size} tokens"
        )
    layers = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.fullmatch(k))})
    if layers != list(range(len(layers))) or not layers:
        raise KeyError(f"open_clip state dict has resblocks {layers}, expected 0..N-1")
    heads = num_heads if num_heads is not None else max(1, width // 64)
    config = clip_text_config(
        vocab_size=rows,
        width=width,
        mlp_width=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        layers=len(layers),
        heads=heads,
        context_length=sd["positional_embedding"].shape[0],
        activation=activation,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        projection_dim=sd["text_projection"].shape[1] if "text_projection" in sd else width,
    )
    model = CLIPTextModel(config)
    mapped: dict[str, torch.Tensor] = {
        "embeddings.token_embedding.weight": sd.pop("token_embedding.weight"),
        "embeddings.position_embedding.weight": sd.pop("positional_embedding"),
        "final_layer_norm.weight": sd.pop("ln_final.weight"),
        "final_layer_norm.bias": sd.pop("ln_final.bias"),
    }
    for i in layers:
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for part, tensor in zip("qkv", sd.pop(src + "attn.in_proj_weight").chunk(3, dim=0)):
            mapped[dst + f"self_attn.{part}_proj.weight"] = tensor
        for part, tensor in zip("qkv", sd.pop(src + "attn.in_proj_bias").chunk(3, dim=0)):
            mapped[dst + f"self_attn.{part}_proj.bias"] = tensor
        for ours, theirs in _BLOCK_KEYS.items():
            mapped[dst + theirs] = sd.pop(src + ours)
    projection = None
    if "text_projection" in sd:
        proj = sd.pop("text_projection")  # open_clip applies x @ P, so P is [width, embed]
        projection = nn.Linear(proj.shape[0], proj.shape[1], bias=False)
        with torch.no_grad():
            projection.weight.copy_(proj.t())
    if sd:
        raise KeyError(f"open_clip text keys with no CLIPTextModel counterpart: {sorted(sd)}")
    # Newer transformers drop the `text_model.` level inside CLIPTextModel; older ones keep it.
    prefix = "text_model." if hasattr(model, "text_model") else ""
    target = {prefix + k: v for k, v in mapped.items()}
    missing, unexpected = model.load_state_dict(target, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise KeyError(f"mapping left missing={missing} unexpected={unexpected}")
    return model.eval(), projection


def _text_tower_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower entries, with a `text.` prefix (CustomTextCLIP) removed."""
    prefix = "text." if "text.token_embedding.weight" in state_dict else ""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if key.startswith("visual.") or key in _IGNORED_TOP:
            continue
        out[key] = value
    return out
