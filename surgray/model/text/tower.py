"""A small CLIP text tower that ReSurgSAM2 embeds and trains with its referring head.

The published ReSurgSAM2 reads a frozen CLIP ViT-B/32 text transformer from a folder
(`ReferringConfig.text_encoder`). A demo-sized model cannot afford 63 M text parameters, and
a random frozen tower would teach the fusion nothing, so `ReferringConfig.text_tower` asks
instead for a freshly initialised tower of CLIP's architecture (causal pre-LN transformer,
quick-GELU MLPs, CLIP's BPE vocabulary of 49408 tokens) that lives inside the model: its
weights are parameters of `ReSurgSAM2.text_tower`, trained with the fusion and saved in the
checkpoint. The vocabulary is the one shipped with surgray (`surgray/assets/clip/`), so a
checkpoint needs no other file to run.

Building a `CLIPTokenizer` from the 49k-merge file takes a couple of seconds, so tokenizers
are cached per vocabulary file for the life of the process (`load_vocab_tokenizer`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from surgray.model.text.encoder import DeferredTokenizer, Overflow, TextEncoder

SHIPPED_VOCAB = ("assets", "clip", "bpe_simple_vocab_16e6.txt.gz")


def package_root() -> Path:
    """The folder of the `surgray` package this module was loaded from."""
    return Path(__file__).resolve().parents[2]  # surgray/model/text/tower.py -> surgray/


class TextTowerConfig(BaseModel):
    """Sizes of an embedded CLIP text tower (`ReferringConfig.text_tower`).

    width: hidden size, the width of the token features the fusion reads (`fusion.text_dim`).
    projection_dim: None for no projection; else a bias-free linear map of the end-of-text
    state, giving `TextFeatures.projected` (what the semantic head compares against).
    vocab: None for the vocabulary shipped with surgray, else a local path to an open_clip BPE
    merges file or a transformers tokenizer directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = 32
    layers: int = 2
    heads: int = 2
    context_length: int = 32
    mlp_ratio: int = 4
    projection_dim: int | None = None
    vocab: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TextTowerConfig:
        problems = []
        for name in ("width", "layers", "heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heads >= 1 and self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if self.context_length < 8:
            problems.append(
                f"context_length must be >= 8 (start, end and a few words), "
                f"got {self.context_length}"
            )
        if self.projection_dim is not None and self.projection_dim < 1:
            problems.append(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if self.vocab is not None and not self.vocab.strip():
            problems.append("vocab is empty: give a path, or None for the shipped vocabulary")
        if problems:
            raise ValueError("text_tower: " + "; ".join(problems))
        return self

    @property
    def token_width(self) -> int:
        """Width of the token and end-of-text features (must equal `fusion.text_dim`)."""
        return self.width

    @property
    def embedding_width(self) -> int:
        """Width of the sentence embedding used for categories (`semantic_head.text_dim`)."""
        return self.projection_dim if self.projection_dim is not None else self.width


def shipped_vocab_path() -> Path:
    """The CLIP BPE merges file packaged with surgray, beside the code that is running.

    Found from this module's own file, not with `importlib.resources.files("surgray")`: run
    from a folder that holds another `surgray/` folder (a second clone, a `--working-dir`
    upload), `surgray` itself can resolve to a namespace package made of that folder, whose
    `MultiplexedPath` cannot join several parts (Python 3.11) and would point into the other
    tree anyway. The assets that belong to this code are the ones next to it.
    """
    path = package_root().joinpath(*SHIPPED_VOCAB)
    if not path.is_file():
        raise FileNotFoundError(
            f"surgray's CLIP vocabulary {path} is missing: the package was installed without "
            "its assets (package data assets/**/*)"
        )
    return path


def resolve_vocab(vocab: str | None) -> Path:
    if vocab is None:
        return shipped_vocab_path()
    path = Path(vocab).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text_tower.vocab {vocab!r} does not exist")
    return path.resolve()


@functools.lru_cache(maxsize=4)
def load_vocab_tokenizer(path: str):
    """A CLIPTokenizer for a vocabulary file, built once per process (it takes seconds)."""
    from surgray.model.text.open_clip_format import tokenizer_from_vocab

    return tokenizer_from_vocab(Path(path))


def build_text_tower(
    cfg: TextTowerConfig,
    cache_size: int = 1024,
    overflow: Overflow = "truncate",
) -> TextEncoder:
    """A randomly initialised, trainable CLIP text tower with its tokenizer."""
    from torch import nn
    from transformers import CLIPTextModel

    from surgray.model.text.open_clip_format import VocabLayout, bpe_vocab_layout, clip_text_config

    vocab = resolve_vocab(cfg.vocab)
    if vocab.is_dir():  # a transformers tokenizer folder: its sizes come from the tokenizer
        tokenizer = load_vocab_tokenizer(str(vocab))
        layout = VocabLayout(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    else:
        layout = bpe_vocab_layout(vocab)
        tokenizer = DeferredTokenizer(functools.partial(load_vocab_tokenizer, str(vocab)))
    config = clip_text_config(
        vocab_size=layout.size,
        width=cfg.width,
        mlp_width=cfg.width * cfg.mlp_ratio,
        layers=cfg.layers,
        heads=cfg.heads,
        context_length=cfg.context_length,
        activation="quick_gelu",
        bos_token_id=layout.bos_token_id,
        eos_token_id=layout.eos_token_id,
        projection_dim=cfg.embedding_width,
    )
    model = CLIPTextModel(config)
    projection = None
    if cfg.projection_dim is not None:
        projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False)
        # CLIP's initialisation of its text projection: normal, std width ** -0.5.
        nn.init.normal_(projection.weight, std=cfg.width**-0.5)
    return TextEncoder(
        model,
        tokenizer,
        projection=projection,
        cache_size=cache_size,
        overflow=overflow,
        trainable=True,
    )
