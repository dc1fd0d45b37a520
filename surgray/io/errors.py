"""Errors raised by the I/O layer; both are ValueErrors so callers can catch bad input broadly."""

from __future__ import annotations

from surgray.errors import UserError


class VideoError(UserError, ValueError):
    """A video (or frame folder) cannot be read or written; the message names the file."""


class MaskFormatError(UserError, ValueError):
    """A mask array, RLE or mask image has the wrong shape, dtype or content."""
