"""Shared plumbing of surgray's pydantic configs: YAML loading and readable validation errors.

Each part keeps its own config models next to its code (`surgray.model.sam2.config`,
`surgray.tracking.memory.config`, `surgray.annotate.config`, `surgray.serving.config`,
`surgray.train.config`); YAML presets in `configs/` validate against them. What they share is
here: a config error names every bad key by its dotted path, and an unknown key lists the keys
its section allows.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from surgray.errors import one_line

ModelT = TypeVar("ModelT", bound=BaseModel)

# A config is a few KiB; a bigger file is a mistake (a video, a checkpoint) and is not parsed.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Keys older configs used, with what to write instead (shown in place of "unknown key").
RENAMED_KEYS = {
    "storage_options": "no longer read; write object-store options as a `storage:` section "
    "(endpoint_url, region, anon, options): see the README's 'Object storage'",
}


def load_yaml_mapping(path: str | os.PathLike[str], error: type[Exception]) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or `error` naming the file and the problem."""
    import yaml

    text_path = os.fspath(path)
    if os.path.isdir(text_path):
        raise error(f"{text_path}: is a folder; give the path of a YAML config file")
    try:
        with open(text_path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{text_path}: config file not found") from None
    except OSError as exc:
        raise error(f"{text_path}: cannot read the config file ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise error(f"{text_path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{text_path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{text_path}: not valid YAML: {one_line(exc, 300)}") from None
    except RecursionError:
        raise error(f"{text_path}: not valid YAML: nested too deeply") from None
    return data


def dotted_path(loc: tuple[Any, ...]) -> str:
    """("model", "policy", 0) -> "model.policy[0]"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _section_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def describe_validation_error(
    exc: ValidationError, root: type[BaseModel], source: str, kind: str
) -> str:
    """One line per problem, e.g. `model.varient: unknown key (allowed: checkpoint, ...)`."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and loc and loc[-1] in RENAMED_KEYS:
            message = RENAMED_KEYS[str(loc[-1])]
        elif error["type"] == "extra_forbidden":
            section = _section_at(root, loc[:-1])
            allowed = sorted(section.model_fields) if section else []
            message = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{dotted_path(loc)}: {message}")
    return f"{source}: invalid {kind} config:\n  " + "\n  ".join(lines)


def validate_config(
    model: type[ModelT], data: Any, *, source: str, kind: str, error: type[Exception]
) -> ModelT:
    """`model` validated from plain data, or `error` listing every problem by its dotted path
    (the one format of every surgray config: annotate, benchmark, serve, training)."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(describe_validation_error(exc, model, source, kind)) from None
