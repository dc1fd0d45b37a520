"""The per-frame skip hook: a user function, named "package.module:function" in the config.

The hook is called with each sampled `surgray.io.video.Frame` (index, time, RGB image) and
returns True to leave the frame out: it is not tracked and gets no mask rows (for instance an
out-of-body frame, which can show the patient or the theatre). It is imported on the actor,
where the job's runtime environment has made the module importable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

SkipHook = Callable[[Any], bool]


def load_skip_hook(path: str | None) -> SkipHook | None:
    """The function `path` names, or None when no hook is configured."""
    if path is None:
        return None
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"skip hook must look like 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"skip hook {path!r}: cannot import {module_name!r}: {exc}") from exc
    hook = getattr(module, attribute, None)
    if not callable(hook):
        raise ValueError(f"skip hook {path!r}: {module_name} has no function {attribute!r}")
    return hook
