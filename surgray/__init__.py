"""surgray: SAM2-family segmentation and tracking of surgical video, at archive scale on Ray.

The names in `__all__` are the stable public surface; everything reached by a deeper path is
internal and may move between releases. They load on first use (PEP 562), so `import surgray`
stays instant and needs neither torch nor Ray until a name is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # networks and checkpoints
    "build_model": "surgray.model.checkpoint",
    "build_resurgsam2": "surgray.model.referring_checkpoint",
    "load_network": "surgray.model.network_loading",
    "ReferringConfig": "surgray.model.referring",
    "ImagePredictor": "surgray.model.image_predictor",
    "CheckpointError": "surgray.model.checkpoint",
    # tracking a video
    "Tracker": "surgray.tracking.tracker",
    "VideoPredictor": "surgray.tracking.predictor",
    "VideoReader": "surgray.io.video",
    # masks and exports
    "encode_rle": "surgray.io.masks",
    "decode_rle": "surgray.io.masks",
    "MaskRecord": "surgray.io.records",
    "read_parquet": "surgray.io.exports",
    "write_parquet": "surgray.io.exports",
    "write_davis": "surgray.io.exports",
    "write_sav_json": "surgray.io.exports",
    "write_coco_video_json": "surgray.io.exports",
    # the batch job and the service
    "AnnotateConfig": "surgray.annotate.config",
    "run_annotate": "surgray.annotate.pipeline",
    "ServeConfig": "surgray.serving.config",
    # errors of the user's making
    "UserError": "surgray.errors",
}

__all__ = [
    "AnnotateConfig",
    "CheckpointError",
    "ImagePredictor",
    "MaskRecord",
    "ReferringConfig",
    "ServeConfig",
    "Tracker",
    "UserError",
    "VideoPredictor",
    "VideoReader",
    "build_model",
    "build_resurgsam2",
    "decode_rle",
    "encode_rle",
    "load_network",
    "read_parquet",
    "run_annotate",
    "write_coco_video_json",
    "write_davis",
    "write_parquet",
    "write_sav_json",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'surgray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from surgray.annotate.config import AnnotateConfig
    from surgray.annotate.pipeline import run_annotate
    from surgray.errors import UserError
    from surgray.io.exports import (
        read_parquet,
        write_coco_video_json,
        write_davis,
        write_parquet,
        write_sav_json,
    )
    from surgray.io.masks import decode_rle, encode_rle
    from surgray.io.records import MaskRecord
    from surgray.io.video import VideoReader
    from surgray.model.checkpoint import CheckpointError, build_model
    from surgray.model.image_predictor import ImagePredictor
    from surgray.model.network_loading import load_network
    from surgray.model.referring import ReferringConfig
    from surgray.model.referring_checkpoint import build_resurgsam2
    from surgray.serving.config import ServeConfig
    from surgray.tracking.predictor import VideoPredictor
    from surgray.tracking.tracker import Tracker
