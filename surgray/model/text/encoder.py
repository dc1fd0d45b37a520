"""Frozen CLIP text tower: referring expressions and category names -> token and sentence features.

ReSurgSAM2 feeds CLIP ViT-B/32's text transformer (transformers' `CLIPTextModel`) to CSTMamba:
every token's final hidden state, and the hidden state at the end-of-text token ("pooled").
Weights come from a local directory or an object-store URI (never a hub), either in
transformers' layout (`from_pretrained`) or as an open_clip state dict (`from_open_clip_state_dict`,
mapped by key names onto the same module, because open_clip itself needs torchvision).

Expressions longer than the model's context (77 tokens for CLIP) are truncated, keeping the
end-of-text token last, with a `UserWarning` naming the expression; `overflow="error"` makes this
a `ValueError` instead. Referring expressions are a handful of words, so a longer one is almost
surely a mistake worth hearing about, but not worth failing a whole video over.

A `TextEncoder` built with `trainable=True` (the small tower ReSurgSAM2 can embed and train,
`surgray.model.text.tower`) follows its parent's train/eval mode instead: in training mode
`encode` runs with autograd and never touches the cache; in eval mode it caches as above, and
the cache is emptied whenever the weights may have changed (`train()`/`eval()`, a state-dict
load, or any in-place update of a parameter such as an optimizer step).

Outside training `encode` is thread-safe: a lock covers the tokenizer (built on first use),
the cache and the tower, because a served model encodes a new session's expressions on the
request's thread while its batch thread may be encoding a searching object's (Serve), and an
annotate actor tracks several videos in threads (`actors.concurrent_videos`).

transformers is imported only inside the functions that need it, so `surgray.model` stays light.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from surgray.io.storage import LOCAL, Storage
from surgray.model.text.files import (
    load_text_projection,
    localize_directory,
    require_tokenizer_files,
)

Overflow = Literal["truncate", "error"]


@dataclass
class TextFeatures:
    """Features of N texts, padded to the longest one.

    tokens: [N, L, width] final hidden states (zeros at padding); mask: [N, L] True at real tokens
    (start- and end-of-text included); pooled: [N, width] the state at each end-of-text token;
    projected: [N, proj] pooled @ CLIP's text projection when the weights carry one, else None.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    projected: torch.Tensor | None = None


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    capacity: int


@dataclass
class _Encoded:
    tokens: torch.Tensor  # [L_i, width]
    pooled: torch.Tensor  # [width]
    projected: torch.Tensor | None


@dataclass(frozen=True)
class DeferredTokenizer:
    """A tokenizer made on first use: building CLIP's from its 49k merges takes seconds that a
    model only ever prompted by clicks, boxes or masks should not spend."""

    build: Callable[[], Any]


class TextEncoder(nn.Module):
    """A CLIP text transformer with its tokenizer and an LRU cache per expression.

    Frozen unless `trainable` (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        projection: nn.Linear | None = None,
        cache_size: int = 1024,
        overflow: Overflow = "truncate",
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.trainable = trainable
        self.model = model if trainable else model.eval()
        self._tokenizer = tokenizer  # or a DeferredTokenizer, built on first use
        self.projection = projection
        self.context_length = int(model.config.max_position_embeddings)
        self.width = int(model.config.hidden_size)
        self.overflow = overflow
        self.cache_size = cache_size
        self._cache: OrderedDict[str, _Encoded] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._cached_version: tuple[int, ...] | None = None
        self._lock = threading.Lock()
        if not trainable:
            for p in self.parameters():
                p.requires_grad_(False)

    @property
    def tokenizer(self) -> Any:
        if isinstance(self._tokenizer, DeferredTokenizer):
            self._tokenizer = self._tokenizer.build()
        return self._tokenizer

    def train(self, mode: bool = True) -> TextEncoder:
        if not self.trainable:
            # Frozen: dropout stays off whatever the surrounding model does.
            return super().train(False)
        self._cache.clear()  # the weights may have moved since the cache was filled
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .half(): cached features would keep the old device and dtype.
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_uri: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        *,
        storage: Storage = LOCAL,
        **kwargs: Any,
    ) -> TextEncoder:
        """Load `CLIPTextModel` + `CLIPTokenizer` from a local directory or an fsspec URI.

        The directory holds transformers' files: `config.json` (a CLIPTextConfig or a full
        CLIPConfig), the weights, and `tokenizer.json` or `vocab.json` + `merges.txt`. A URI is
        copied once to `cache_dir` (default: a folder under the system temp dir named by the
        URI's hash). If the weights carry `text_projection.weight` (a full CLIPModel checkpoint),
        `TextFeatures.projected` is filled too.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        local = localize_directory(str(path_or_uri), cache_dir, storage=storage)
        if not local.is_dir():
            raise FileNotFoundError(f"text encoder directory {local} does not exist")
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{local} has no config.json: not a transformers CLIP directory"
            )
        require_tokenizer_files(local)
        tokenizer = CLIPTokenizer.from_pretrained(str(local), local_files_only=True)
        model = CLIPTextModel.from_pretrained(str(local), local_files_only=True)
        return cls(model, tokenizer, projection=load_text_projection(local), **kwargs)

    @classmethod
    def from_open_clip_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        vocab_path: str | os.PathLike,
        num_heads: int | None = None,
        activation: Literal["quick_gelu", "gelu"] = "quick_gelu",
        **kwargs: Any,
    ) -> TextEncoder:
        """Map an open_clip CLIP text tower onto transformers' `CLIPTextModel`.

        state_dict: open_clip keys (`token_embedding.weight`, `positional_embedding`,
        `transformer.resblocks.N.attn.in_proj_weight`, `ln_final.*`, `text_projection`, ...),
        optionally under `text.`; vision keys and `logit_scale` are ignored. vocab_path: a
        directory with `vocab.json` + `merges.txt` (or `tokenizer.json`), or open_clip's
        `bpe_simple_vocab_16e6.txt.gz`. num_heads defaults to open_clip's width // 64.
        activation: "quick_gelu" for OpenAI-trained towers, "gelu" for most others.
        """
        from surgray.model.text.open_clip_format import build_clip_text_model, tokenizer_from_vocab

        tokenizer = tokenizer_from_vocab(Path(vocab_path))
        model, projection = build_clip_text_model(
            state_dict,
            num_heads=num_heads,
            activation=activation,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            vocab_size=len(tokenizer),
        )
        return cls(model, tokenizer, projection=projection, **kwargs)

    # ---------------------------------------------------------------- encoding

    @property
    def uses_autograd(self) -> bool:
        """True while `encode` runs the tower with gradients and bypasses the cache."""
        return self.trainable and self.training

    def weights_version(self) -> tuple[int, ...]:
        """Changes whenever a parameter is modified in place (optimizer steps, loads)."""
        # Tensor._version is autograd's in-place counter: optimizer updates and
        # load_state_dict copies bump it, so a cache keyed on it never serves stale weights.
        return tuple(p._version for p in self.parameters())

    def encode(self, texts: list[str]) -> TextFeatures:
        """Encode N texts; repeated expressions come from the cache (outside training)."""
        _check_texts(texts)
        if self.uses_autograd:
            return _pad(self._run(list(texts)))
        with self._lock, torch.no_grad():
            return self._encode_cached(list(texts))

    def __getstate__(self) -> dict:
        # A lock is neither copied nor pickled: a copy (fast mode's int8 model) gets its own.
        state = dict(super().__getstate__())
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    def _encode_cached(self, texts: list[str]) -> TextFeatures:
        if self.trainable:
            version = self.weights_version()
            if version != self._cached_version:
                self._cache.clear()
                self._cached_version = version
        found: dict[str, _Encoded] = {}
        for text in dict.fromkeys(texts):
            if text in self._cache:
                found[text] = self._cache[text]
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        self._misses += len(missing)
        self._hits += len(texts) - len(missing)
        if missing:
            for text, encoded in zip(missing, self._run(missing)):
                found[text] = encoded
                self._remember(text, encoded)
        for text in texts:  # least recently used = the one whose last use is oldest
            if text in self._cache:
                self._cache.move_to_end(text)
        entries = [found[t] for t in texts]
        return _pad(entries)

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    def _run(self, texts: list[str]) -> list[_Encoded]:
        device = next(self.model.parameters()).device
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        for text, ids in zip(texts, full):
            if len(ids) > self.context_length:
                # Logs carry a short prefix and the length, never the whole user text.
                message = (
                    f"text {short_text(text)} has {len(ids)} tokens, more than the text "
                    f"encoder's context of {self.context_length}"
                )
                if self.overflow == "error":
                    raise ValueError(message)
                warnings.warn(message + "; truncated", UserWarning, stacklevel=3)
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        ).to(device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state
        lengths = batch["attention_mask"].sum(-1).tolist()
        encoded = []
        for i, n in enumerate(lengths):
            # The tokenizer ends every (truncated or not) sequence with end-of-text.
            pooled = hidden[i, n - 1]
            projected = self.projection(pooled) if self.projection is not None else None
            encoded.append(_Encoded(hidden[i, :n].clone(), pooled.clone(), projected))
        return encoded

    def _remember(self, text: str, encoded: _Encoded) -> None:
        self._cache[text] = encoded
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _check_texts(texts) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError("texts must be a list of strings")
    if not texts:
        raise ValueError("texts is empty: give at least one expression")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty: a referring expression needs words")


def short_text(text: str, keep: int = 40) -> str:
    """`text` for a log line: its first `keep` characters (repr) and its length, if longer."""
    if len(text) <= keep:
        return repr(text)
    return f"{text[:keep]!r}... ({len(text)} characters)"


def _pad(entries: list[_Encoded]) -> TextFeatures:
    longest = max(e.tokens.shape[0] for e in entries)
    width = entries[0].tokens.shape[1]
    ref = entries[0].tokens
    tokens = ref.new_zeros(len(entries), longest, width)
    mask = torch.zeros(len(entries), longest, dtype=torch.bool, device=ref.device)
    for i, e in enumerate(entries):
        tokens[i, : e.tokens.shape[0]] = e.tokens
        mask[i, : e.tokens.shape[0]] = True
    pooled = torch.stack([e.pooled for e in entries])
    projected = None
    if entries[0].projected is not None:
        projected = torch.stack([e.projected for e in entries])
    return TextFeatures(tokens=tokens, mask=mask, pooled=pooled, projected=projected)
