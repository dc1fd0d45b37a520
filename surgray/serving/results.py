"""Turn a backend's masks into API results: COCO RLE, area, bbox and optional binary PNG."""

from __future__ import annotations

import base64
import io

import numpy as np

from surgray.serving.backend import TrackedFrame
from surgray.serving.errors import ApiError
from surgray.serving.schemas import ObjectResult, RleMask


class BackendOutputError(ApiError):
    """The backend returned masks that do not fit the frame (a server bug, not the client's)."""

    status, code = 500, "internal_error"


def mask_png_base64(mask: np.ndarray) -> str:
    """A 1-bit PNG of one [H, W] bool mask, base64 (decodes to 0/255 in 8-bit viewers)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask)).convert("1").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_objects(frame: TrackedFrame, *, include_png: bool = False) -> list[ObjectResult]:
    """One `ObjectResult` per tracked object, masks encoded in one pycocotools call."""
    from surgray.io.masks import encode_rle, rle_area, rle_bbox

    if not frame.objects:
        return []
    expected = (frame.height, frame.width)
    for obj in frame.objects:
        if obj.mask.shape != expected or obj.mask.dtype != bool:
            raise BackendOutputError(
                f"object {obj.obj_id}: mask is {obj.mask.dtype}{list(obj.mask.shape)}, "
                f"the frame needs bool{list(expected)}"
            )
    stack = np.stack([obj.mask for obj in frame.objects])
    rles = encode_rle(stack)
    areas = rle_area(rles)
    boxes = rle_bbox(rles)
    results = []
    for obj, rle, area, box in zip(frame.objects, rles, areas, boxes):
        results.append(
            ObjectResult(
                obj_id=obj.obj_id,
                label=obj.label,
                state=obj.state,
                score=float(obj.score),
                predicted_iou=None if obj.predicted_iou is None else float(obj.predicted_iou),
                rle=RleMask(size=(rle["size"][0], rle["size"][1]), counts=rle["counts"]),
                png_base64=mask_png_base64(obj.mask) if include_png else None,
                bbox=tuple(float(v) for v in box) if area > 0 else None,
                area=int(area),
            )
        )
    return results
