"""The per-frame skip hook: a user function, named "package.module:function" in the config.

The hook is called with each sampled `surgray.io.video.Frame` (index, time, RGB image) and
returns True to leave the frame out: it is not tracked and gets no mask rows (for instance an
out-of-body frame, which can show the patient or the theatre). It is imported on the actor,
where the job's runtime environment has made the module importable.

With `actors.concurrent_videos` > 1 an actor tracks several videos in threads and calls the
hook one call at a time, since a user's hook need not be thread-safe. A hook that is (pure
arithmetic on the frame, per-thread state) says so with an attribute, and is then called from
the threads at once:

    def skip_out_of_body(frame) -> bool: ...
    skip_out_of_body.thread_safe = True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

SkipHook = Callable[[Any], bool]


def is_thread_safe(hook: SkipHook) -> bool:
    """Whether the hook declared itself safe to call from several threads at once."""
    return getattr(hook, "thread_safe", False) is True


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
