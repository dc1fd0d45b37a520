"""How the annotation job names videos in logs and status records: by id, never by URI.

A hospital archive's object keys often carry patient names, dates or case numbers, so a URI
may appear only at DEBUG level. Messages that come from elsewhere (a decoder error names the
file it failed on) go through `redact` before they are logged or stored.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger("surgray.annotate")


def video_label(video_id: str) -> str:
    """The one way a video is named at INFO and above."""
    return f"video {video_id}"


def redact(message: str, uri: str, video_id: str) -> str:
    """`message` with every spelling of `uri` replaced by the video's label.

    fsspec reports remote objects without their scheme ("bucket/key") and local files may
    appear as plain paths, so the bare path is replaced as well as the full URI.
    """
    label = f"<{video_label(video_id)}>"
    spellings = {uri}
    if "://" in uri:
        spellings.add(uri.split("://", 1)[1])
    # Longest first, so a full URI is not left with its scheme dangling.
    for spelling in sorted(filter(None, spellings), key=len, reverse=True):
        message = message.replace(spelling, label)
    return message


def log_uri(video_id: str, uri: str) -> None:
    """Record which source a video id stands for, at DEBUG only."""
    logger.debug("%s is %s", video_label(video_id), uri)


# Video ids name output folders and files: no separators, no "=", nothing hidden.
SAFE_VIDEO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_video_id(video_id: str) -> str:
    if not isinstance(video_id, str) or not SAFE_VIDEO_ID.match(video_id):
        raise ValueError(
            f"video id {video_id!r} must be 1-200 of letters, digits, '.', '_', '-' "
            "and start with a letter or digit"
        )
    return video_id
