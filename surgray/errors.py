"""The error policy shared by every entry point.

A `UserError` is a mistake of the user's making (a bad argument, file, config, checkpoint or
request): the `surgray` command prints its message as one line and exits 2, never a traceback.
Anything else is an internal error: one line and exit 1, with the traceback only when the user
asks for it (`surgray --debug ...` or `SURGRAY_DEBUG=1`).

Modules raise their own subclasses (`ConfigError`, `CheckpointError`, ...) so callers can still
catch the precise kind; the CLI only needs to know that it is the user's to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

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


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with the error policy: a bad argument is one line on stderr and exit 2.

    (argparse's own `error` prints the whole usage block first; the one line names the
    problem and where the usage is.)
    """

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER)
