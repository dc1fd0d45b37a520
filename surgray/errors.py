"""The error policy shared by every entry point.

A `UserError` is a mistake of the user's making (a bad argument, file, config, checkpoint or
request): the `surgray` command prints its message as one line and exits 2, never a traceback.
Anything else is an internal error: one line and exit 1, with the traceback only when the user
asks for it (`surgray --debug ...` or `SURGRAY_DEBUG=1`).

Modules raise their own subclasses (`ConfigError`, `CheckpointError`, ...) so callers can still
catch the precise kind; the CLI only needs to know that it is the user's to fix.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2


class UserError(Exception):
    """A mistake the user can fix; its message names the thing and what would fix it."""


def debug_requested() -> bool:
    """True when SURGRAY_DEBUG asks for tracebacks (any value but '', '0', 'false', 'no')."""
    return os.environ.get("SURGRAY_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: object, limit: int = 500) -> str:
    """`message` folded onto one line and cut to `limit` characters, for terminal output."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
