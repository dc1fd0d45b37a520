"""The files behind a CLIP text encoder: a local folder (copied once from object storage when
given a URI), its tokenizer files, and the text projection of a full CLIPModel checkpoint."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from surgray.io.storage import Storage

_TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def localize_directory(path_or_uri: str, cache_dir, *, storage: Storage) -> Path:
    """A local directory for `path_or_uri`, copying it from object storage when needed."""
    if "://" not in path_or_uri or path_or_uri.startswith("file://"):
        return Path(path_or_uri.removeprefix("file://"))
    fs, root = storage.filesystem(path_or_uri)
    digest = hashlib.sha256(path_or_uri.encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir())
    target = base / f"surgray-text-encoder-{digest}"
    if target.is_dir():
        return target
    if not fs.isdir(root):
        raise FileNotFoundError(f"{path_or_uri} is not a directory in object storage")
    # Download beside the target and rename: concurrent loaders (several actors on one node)
    # never see a half-copied directory.
    base.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=base))
    try:
        for remote in fs.find(root):
            dest = partial / remote[len(root.rstrip("/")) + 1 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(dest))
        os.replace(partial, target)
    except OSError:
        if not target.is_dir():  # not a lost race with another loader
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def require_tokenizer_files(directory: Path) -> None:
    for names in _TOKENIZER_FILE_SETS:
        if all((directory / n).is_file() for n in names):
            return
    raise FileNotFoundError(
        f"{directory} has no tokenizer files: expected tokenizer.json, or vocab.json and merges.txt"
    )


def load_text_projection(directory: Path) -> nn.Linear | None:
    """CLIP's text projection from a full-CLIPModel safetensors file, when it holds one."""
    weights = directory / "model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        if "text_projection.weight" not in f.keys():
            return None
        weight = f.get_tensor("text_projection.weight")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer
