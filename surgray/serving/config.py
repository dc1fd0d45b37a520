"""`ServeConfig`: everything the HTTP segmentation service needs, loadable from YAML.

Two file shapes are accepted:
- a plain mapping of `ServeConfig` sections, and
- Ray Serve's own config file (the one `serve deploy` takes: `applications: [{name,
  import_path, args, deployments}]`), where our sections live under the application's `args`.
  `serve deploy` hands that `args` dict to the application builder in `serve/app.py`, which
  calls `ServeConfig.from_args(args)`.

Unknown keys are errors, and error messages name each bad key by its dotted path. Secrets never
live here: bearer tokens and the session-id key come from environment variables or files, and a
checkpoint is a URI the server resolves, never something a client names.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from surgray.config import load_yaml_mapping, validate_config
from surgray.errors import UserError
from surgray.io.storage_config import StorageConfig

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIB = 1024 * 1024


class ServeConfigError(UserError, ValueError):
    """The serve configuration is invalid; the message names each bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _env_name(value: str | None, key: str) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(f"{key} must be an environment variable name, got {value!r}")
    return value


class ServedModel(_Section):
    """One model of the server-side registry; clients pick it by `name` only."""

    name: str = Field("default", pattern=MODEL_NAME_PATTERN)
    variant: str = "tiny"
    checkpoint: str = Field(min_length=1)  # local path or object-store URI
    image_size: int = Field(1024, gt=0)
    policy: str = "recent"
    policy_options: dict[str, Any] = Field(default_factory=dict)
    text_encoder: str | None = None  # local folder of CLIP text weights, for text prompts
    precision: str = "fp32"
    description: str = ""


class SessionsConfig(_Section):
    """Bounds on the tracking sessions one replica keeps."""

    max_per_replica: int = Field(8, ge=1)
    idle_timeout_s: float = Field(300.0, gt=0)
    max_frames: int = Field(108_000, ge=1)  # an hour at 30 fps
    # Ended session ids remembered so a late request reads 410 (gone) rather than 404.
    tombstones: int = Field(4096, ge=0)
    # Environment variable holding the key that signs session ids (shared by all replicas).
    id_key_env: str | None = "SURGRAY_SESSION_KEY"

    @field_validator("id_key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        return _env_name(value, "sessions.id_key_env")


class LimitsConfig(_Section):
    """Request limits; larger bodies get 413, larger images 413, bad ones 415/422."""

    max_body_bytes: int = Field(16 * MIB, ge=1024)  # one frame, or a session-create JSON body
    max_image_side: int = Field(4096, ge=16)
    max_video_bytes: int = Field(256 * MIB, ge=1024)  # POST /v1/segment
    max_video_frames: int = Field(3000, ge=1)
    max_objects: int = Field(32, ge=1)  # objects (prompted or text-referred) per session


class AuthConfig(_Section):
    """Bearer tokens from `token_env` (comma-separated) and/or `token_file` (one per line)."""

    token_env: str | None = "SURGRAY_API_TOKENS"
    token_file: str | None = None
    # Only for local demos: serve without any authentication.
    insecure_no_auth: bool = False

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str | None) -> str | None:
        return _env_name(value, "auth.token_env")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("auth.token_file must be a path, got an empty string")
        return value


class HttpConfig(_Section):
    """Where Serve's HTTP proxy listens. `serve run serve.app:app host=.. port=..` (or an `http`
    section) starts Serve there (`serve/http_start.py`); in a Ray Serve config file the top-level
    `http_options` decide, and `from_yaml` refuses an `args.http` that differs from them."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class BatchingConfig(_Section):
    """Frames of different sessions stepped together through the image encoder."""

    max_batch_size: int = Field(4, ge=1)
    wait_timeout_s: float = Field(0.005, ge=0)


class ReviewSource(_Section):
    """One annotation output prefix the review page may read (and write revisions beside)."""

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    uri: str = Field(min_length=1)  # local absolute path or object-store URI
    description: str = ""
    writable: bool = True
    storage: StorageConfig = Field(default_factory=StorageConfig)  # the store `uri` is in

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if ".." in value.replace("\\", "/").split("/"):
            raise ValueError(f"review source uri must not contain '..', got {value!r}")
        if not (value.startswith("/") or "://" in value):
            raise ValueError(f"review source uri must be absolute or a URI, got {value!r}")
        return value.rstrip("/")


class ReviewConfig(_Section):
    """The review page's allow-list: the only stores it reads; the browser names them only."""

    sources: list[ReviewSource] = Field(default_factory=list)
    live_source: str | None = None  # the source that takes saves of live sessions

    @model_validator(mode="after")
    def _live_listed(self) -> ReviewConfig:
        names = [source.name for source in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"review.sources names must be unique, got {names}")
        if self.live_source is not None and self.live_source not in names:
            raise ValueError(f"review.live_source {self.live_source!r} is not one of {names}")
        return self


class ServeConfig(_Section):
    model: ServedModel
    replicas: int = Field(1, ge=1)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)  # the model's checkpoint store

    def model_registry(self) -> dict[str, ServedModel]:
        """Model name -> entry; the only way a request chooses a model."""
        return {self.model.name: self.model}

    @classmethod
    def from_args(cls, args: Any, *, source: str = "serve args") -> ServeConfig:
        """Validate the `args` mapping Ray Serve passes to the application builder."""
        return validate_config(cls, args, source=source, kind="serve", error=ServeConfigError)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, app_name: str | None = None) -> ServeConfig:
        """Load a plain ServeConfig YAML, or a Ray Serve config file (the app's `args`)."""
        text_path = os.fspath(path)
        data = load_yaml_mapping(text_path, ServeConfigError)
        if isinstance(data, dict) and "applications" in data:
            args = serve_app_args(data, app_name=app_name, source=text_path)
            return cls.from_args(
                _with_ray_http_options(args, data.get("http_options"), text_path),
                source=f"{text_path} (application args)",
            )
        return cls.from_args(data, source=text_path)


def _with_ray_http_options(args: dict[str, Any], options: Any, source: str) -> dict[str, Any]:
    """`args` whose `http` is the file's `http_options` (what Serve listens on): an `args.http`
    that says otherwise is refused, so the file can not claim one port and listen on another."""
    if not isinstance(options, dict) or not ({"host", "port"} & set(options)):
        return args
    ray_http = {key: options[key] for key in ("host", "port") if key in options}
    given = args.get("http")
    if isinstance(given, dict):
        clash = {k: (given[k], v) for k, v in ray_http.items() if k in given and given[k] != v}
        if clash:
            said = ", ".join(f"args.http.{k} is {a!r} but http_options.{k} is {b!r}"
                             for k, (a, b) in clash.items())  # fmt: skip
            raise ServeConfigError(
                f"{source}: {said}; Serve listens where http_options say, keep them equal"
            )
        ray_http = {**given, **ray_http}
    return {**args, "http": ray_http}


def serve_app_args(
    serve_config: dict[str, Any], *, app_name: str | None = None, source: str = "serve config"
) -> dict[str, Any]:
    """The `args` of one application of a Ray Serve config file (the only one, or `app_name`)."""
    apps = serve_config.get("applications")
    if not isinstance(apps, list) or not apps:
        raise ServeConfigError(f"{source}: 'applications' must be a non-empty list")
    if app_name is None:
        if len(apps) != 1:
            names = [app.get("name") for app in apps if isinstance(app, dict)]
            raise ServeConfigError(
                f"{source}: {len(apps)} applications {names}; pass app_name to pick one"
            )
        chosen = apps[0]
    else:
        matches = [app for app in apps if isinstance(app, dict) and app.get("name") == app_name]
        if not matches:
            raise ServeConfigError(f"{source}: no application named {app_name!r}")
        chosen = matches[0]
    if not isinstance(chosen, dict) or not isinstance(chosen.get("args"), dict):
        raise ServeConfigError(f"{source}: the application has no 'args' mapping")
    return chosen["args"]
