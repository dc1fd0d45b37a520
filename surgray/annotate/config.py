"""`AnnotateConfig`: everything the archive annotation job needs, loadable from YAML.

Unknown keys are errors (a typo must not silently fall back to a default), and `from_yaml`
turns pydantic's errors into one message per bad key, named by its dotted path.
Secrets never live here: the video-id salt comes from an environment variable or a file, and
object-store credentials from the environment or the machine's role, because configs are
logged, copied into job submissions and kept next to the outputs.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from surgray.config import load_yaml_mapping, validate_config
from surgray.errors import UserError
from surgray.io.storage_config import StorageConfig

# What a prefix listing takes as a video (compared case-insensitively: recorders write .MP4).
DEFAULT_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mxf",
)
EXPORT_FORMATS = ("parquet", "davis", "sav_json", "overlay_mp4")
_HOOK_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names each bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputsConfig(_Section):
    """Exactly one of: a prefix (object store or local folder) to list, or a manifest file."""

    prefix: str | None = None
    manifest: str | None = None
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    recursive: bool = True

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(dict.fromkeys("." + ext.strip().lower().lstrip(".") for ext in value))
        if not cleaned or "." in cleaned:
            raise ValueError("give at least one non-empty extension, e.g. [mp4, mkv]")
        return cleaned

    @model_validator(mode="after")
    def _one_source(self) -> InputsConfig:
        if (self.prefix is None) == (self.manifest is None):
            raise ValueError("give exactly one of inputs.prefix or inputs.manifest")
        return self


class OutputConfig(_Section):
    prefix: str = Field(min_length=1)
    # A long video's rows go out in parts of this many rows, so a writer's memory is bounded.
    rows_per_part: int = Field(50_000, ge=1)


class ModelSection(_Section):
    """Which network and memory policy to run; the model package validates the values."""

    variant: str = "tiny"
    checkpoint: str = Field(min_length=1)  # local path, object-store URI or demo:<name>
    image_size: int = Field(1024, gt=0)
    policy: str = "recent"
    policy_options: dict[str, Any] = Field(default_factory=dict)
    text_encoder: str | None = None  # local folder of CLIP text weights, for text prompts
    # fp32 (exact) | bf16 | fp16 (CUDA) | int8 (CPU) | fast: surgray.tracking.precision
    precision: str = "fp32"

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from surgray.tracking.precision import normalize_precision

        return normalize_precision(value)


class SegmentingConfig(_Section):
    # Long videos prompted only by text are cut into pieces of at most this many source frames.
    max_segment_frames: int | None = Field(None, ge=1)


class ActorsConfig(_Section):
    count: int = Field(1, ge=1)
    # Fractional by default: on small machines whole-CPU actors starve Ray's read tasks.
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(None, ge=1)
    # Work items each actor tracks at once, each in its own thread on the actor's one model
    # (`surgray.annotate.actor`). The throughput route on CPU: N = the actor's CPUs with one
    # torch thread each beats one video on N torch threads (benchmarks/README.md). Frames in
    # flight grow to actors x N x K. Keep 1 on GPU.
    concurrent_videos: int = Field(1, ge=1)

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"num_gpus above 1 must be a whole number, got {value}")
        return value


class BatchingConfig(_Section):
    videos_per_step: int = Field(1, ge=1)  # K videos stepped together through the encoder


class PrivacyConfig(_Section):
    """Hash video ids with HMAC-SHA256; the salt is read from `salt_file`, else `salt_env`."""

    hash_video_ids: bool = True
    salt_env: str | None = "SURGRAY_ID_SALT"
    salt_file: str | None = None
    id_hex_chars: int = Field(16, ge=12, le=64)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_salt(cls, data: Any) -> Any:
        if isinstance(data, dict) and any("salt" == str(k).lower() for k in data):
            raise ValueError(
                "'salt' is not allowed: never put the salt in the config; name an environment "
                "variable (salt_env) or a file (salt_file) that holds it"
            )
        return data

    @field_validator("salt_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"salt_env must be an environment variable name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _salt_source(self) -> PrivacyConfig:
        if self.hash_video_ids and self.salt_env is None and self.salt_file is None:
            raise ValueError("hash_video_ids needs salt_env or salt_file")
        return self


class FramesConfig(_Section):
    stride: int = Field(1, ge=1)
    target_fps: float | None = Field(None, gt=0)
    # "package.module:function", called per frame; True skips it (e.g. out-of-body frames).
    skip_hook: str | None = None

    @field_validator("skip_hook")
    @classmethod
    def _hook_path(cls, value: str | None) -> str | None:
        if value is not None and not _HOOK_PATH.match(value):
            raise ValueError(f"skip_hook must look like 'package.module:function', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_sampling(self) -> FramesConfig:
        if self.target_fps is not None and self.stride != 1:
            raise ValueError("give frames.stride or frames.target_fps, not both")
        return self


class AnnotateConfig(_Section):
    inputs: InputsConfig
    output: OutputConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelSection
    prompts: tuple[str, ...] = ()  # text expressions applied to every video
    segmenting: SegmentingConfig = Field(default_factory=SegmentingConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    exports: tuple[Literal["parquet", "davis", "sav_json", "overlay_mp4"], ...] = ("parquet",)
    frames: FramesConfig = Field(default_factory=FramesConfig)

    @field_validator("prompts")
    @classmethod
    def _clean_prompts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(text.strip() for text in value)
        for index, text in enumerate(cleaned):
            if not text:
                raise ValueError(f"prompt {index} is an empty expression")
        return tuple(dict.fromkeys(cleaned))

    @field_validator("exports")
    @classmethod
    def _parquet_always(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        wanted = {"parquet", *value}
        return tuple(fmt for fmt in EXPORT_FORMATS if fmt in wanted)

    @model_validator(mode="after")
    def _consistent(self) -> AnnotateConfig:
        if self.inputs.prefix is not None and not self.prompts:
            raise ValueError(
                "prompts: a prefix of videos has no per-video prompts, so give text prompts here"
            )
        limit = self.segmenting.max_segment_frames
        if limit is not None and limit < self.frames.stride:
            raise ValueError(
                f"segmenting.max_segment_frames ({limit}) must be at least frames.stride "
                f"({self.frames.stride})"
            )
        return self

    def output_affecting(self) -> dict[str, Any]:
        """The settings that change the rows written, for the config hash.

        Left out: where things are read and written, credentials, actor counts and batching
        (they change speed, not results), privacy (it changes the video id, which already
        names the output location) and the checkpoint's location (its sha256 is recorded).
        """
        return {
            "model": self.model.model_dump(mode="json", exclude={"checkpoint"}),
            "prompts": list(self.prompts),
            "frames": self.frames.model_dump(mode="json"),
            "segmenting": self.segmenting.model_dump(mode="json"),
            "exports": list(self.exports),
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> AnnotateConfig:
        return validate_config(cls, data, source=source, kind="annotate", error=ConfigError)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> AnnotateConfig:
        text_path = os.fspath(path)
        return cls.from_dict(load_yaml_mapping(text_path, ConfigError), source=text_path)
