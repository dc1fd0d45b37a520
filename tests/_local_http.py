"""Helpers for tests that listen on 127.0.0.1: a free port, Ray Serve's HTTP proxy on one,
images encoded as a client would send them."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # scripts the tests start import this module too
    sys.path.insert(0, str(REPO))

from devtools.loopback import free_port  # noqa: E402, F401  (the tests import it from here)


def import_serve_app() -> None:
    """Make `serve/` (the Serve application's package, beside `surgray/`) importable."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


@contextlib.contextmanager
def serve_http() -> Iterator[str]:
    """Ray Serve started with its HTTP proxy on a free port of 127.0.0.1; yields the base URL
    and shuts Serve down afterwards (Ray itself must already be running)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()
