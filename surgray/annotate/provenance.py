"""What produced a video's masks: checkpoint digest, config hash, surgray version, prompts;
and the salted hashing that turns source names into video ids.

A rerun skips a video only when its recorded provenance equals the one it would produce now,
so everything here must be deterministic: canonical JSON, no timestamps, no paths that move.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from surgray.annotate.config import AnnotateConfig, ConfigError, PrivacyConfig
from surgray.annotate.prompts import VideoPrompts
from surgray.io.storage import Storage

MIN_SALT_BYTES = 16  # shorter salts make ids of guessable names open to brute force
_CHUNK = 1 << 20

_cache: dict[tuple[str, int, str], str] = {}
_cache_lock = threading.Lock()
_cache_counts = {"hits": 0, "misses": 0}


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_hash(config: AnnotateConfig) -> str:
    """sha256 of the settings that change outputs (`AnnotateConfig.output_affecting`)."""
    return sha256_text(canonical_json(config.output_affecting()))


def surgray_version() -> str:
    import surgray

    return surgray.__version__


def _fingerprint(info: Mapping[str, Any]) -> str:
    # Whatever the store offers that changes when the object is rewritten.
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


def checkpoint_sha256(uri: str | os.PathLike[str], *, storage: Storage) -> str:
    """sha256 of a checkpoint file (a path, a URI or a shipped `demo:<name>`), read in 1 MiB
    chunks through fsspec.

    Cached in this process per (URI, size, ETag or mtime), so each actor of a job hashes a
    multi-GB checkpoint once, and a rewritten file is hashed again.
    """
    from surgray.model.checkpoints.sam2_checkpoint import CheckpointError, shipped_checkpoint_path

    text = os.fspath(uri)
    try:
        fs, path = storage.filesystem(shipped_checkpoint_path(text))
    except CheckpointError as exc:
        raise FileNotFoundError(str(exc)) from None
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{text}: checkpoint not found") from None
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{text}: checkpoint is a folder, expected a file")
    key = (text, int(info.get("size") or 0), _fingerprint(info))
    with _cache_lock:
        if key in _cache:
            _cache_counts["hits"] += 1
            return _cache[key]
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=_CHUNK) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    result = digest.hexdigest()
    with _cache_lock:
        _cache[key] = result
        _cache_counts["misses"] += 1
    return result


def checkpoint_cache_info() -> dict[str, int]:
    """Hits and misses of the checkpoint digest cache in this process."""
    with _cache_lock:
        return dict(_cache_counts)


@dataclass(frozen=True)
class Provenance:
    """Recorded in each video's completion marker and status; equal means "same outputs"."""

    surgray_version: str
    config_hash: str
    checkpoint_sha256: str
    prompts_sha256: str
    prompts_json: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if not isinstance(data.get(n), str)]
        if missing:
            raise ValueError(f"provenance lacks {missing}")
        return cls(**{n: data[n] for n in names})


def video_provenance(
    config_digest: str,
    checkpoint_digest: str,
    prompts: VideoPrompts,
    version: str | None = None,
) -> Provenance:
    text = prompts.to_json()
    return Provenance(
        surgray_version=version or surgray_version(),
        config_hash=config_digest,
        checkpoint_sha256=checkpoint_digest,
        prompts_sha256=sha256_text(text),
        prompts_json=text,
    )


def load_salt(
    privacy: PrivacyConfig,
    environ: Mapping[str, str] | None = None,
    *,
    storage: Storage,
) -> bytes:
    """The video-id salt, from `privacy.salt_file` if set, else the `privacy.salt_env` variable."""
    environ = os.environ if environ is None else environ
    if privacy.salt_file is not None:
        fs, path = storage.filesystem(privacy.salt_file)
        try:
            with fs.open(path, "rb") as handle:
                salt = handle.read().strip()
        except FileNotFoundError:
            raise ConfigError(f"privacy.salt_file {privacy.salt_file}: file not found") from None
        source = f"privacy.salt_file {privacy.salt_file}"
    elif privacy.salt_env is not None:
        salt = environ.get(privacy.salt_env, "").strip().encode("utf-8")
        source = f"environment variable {privacy.salt_env} (privacy.salt_env)"
        if not salt:
            raise ConfigError(f"{source} is not set; video ids are hashed with it")
    else:
        raise ConfigError("privacy: give salt_env or salt_file to hash video ids")
    if len(salt) < MIN_SALT_BYTES:
        raise ConfigError(
            f"{source}: the salt must be at least {MIN_SALT_BYTES} bytes, got {len(salt)}"
        )
    return salt


def hash_video_id(name: str, salt: bytes, hex_chars: int = 16) -> str:
    """HMAC-SHA256 of a video's source name under `salt`, as `hex_chars` hex digits.

    Without the salt the id cannot be traced back to the name, even for names that can be
    guessed (dates, case numbers); with it, the same name always gives the same id.
    """
    if not salt:
        raise ValueError("hash_video_id needs a non-empty salt")
    if not 1 <= hex_chars <= 64:
        raise ValueError(f"hex_chars must be 1..64, got {hex_chars}")
    return hmac.new(salt, name.encode("utf-8"), hashlib.sha256).hexdigest()[:hex_chars]
