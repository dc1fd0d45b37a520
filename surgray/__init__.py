"""surgray: SAM2-family segmentation and tracking of surgical video, at archive scale on Ray.

The names in `__all__` are the stable public surface; everything reached by a deeper path is
internal and may move between releases. They load on first use (PEP 562), so `import surgray`
stays instant and needs neither torch nor Ray until a name is touched.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # networks and checkpoints
    "build_model": "surgray.model.checkpoints.sam2_checkpoint",
    "build_resurgsam2": "surgray.model.checkpoints.referring_checkpoint",
    "load_network": "surgray.model.checkpoints.network_loading",
    "ReferringConfig": "surgray.model.referring.config",
    "ImagePredictor": "surgray.model.sam2.image_predictor",
    "CheckpointError": "surgray.model.checkpoints.sam2_checkpoint",
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
    # object storage: a config's `storage:` section and the object built from it
    "Storage": "surgray.io.storage",
    "StorageConfig": "surgray.io.storage_config",
    # the batch job and the service
    "AnnotateConfig": "surgray.annotate.config",
    "run_annotate": "surgray.annotate.pipeline",
    "ServeConfig": "surgray.serving.config",
    # errors of the user's making
    "UserError": "surgray.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'surgray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
