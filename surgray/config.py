"""Shared plumbing of surgray's pydantic configs: YAML loading and readable validation errors.

Each part keeps its own config models next to its code (`surgray.model.config`,
`surgray.tracking.memory.config`, `surgray.annotate.config`, `surgray.serving.config`,
`surgray.train.config`); YAML presets in `configs/` validate against them. What they share is
here: a config error names every bad key by its dotted path, and an unknown key lists the keys
its section allows.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ValidationError


def load_yaml_mapping(path: str | os.PathLike[str], error: type[Exception]) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or `error` naming the file and the problem."""
    import yaml

    text_path = os.fspath(path)
    try:
        with open(text_path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise error(f"{text_path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{text_path}: not valid YAML: {exc}") from None
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
        if error["type"] == "extra_forbidden":
            section = _section_at(root, loc[:-1])
            allowed = sorted(section.model_fields) if section else []
            message = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{dotted_path(loc)}: {message}")
    return f"{source}: invalid {kind} config:\n  " + "\n  ".join(lines)
