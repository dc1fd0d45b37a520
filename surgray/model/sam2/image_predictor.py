"""Single-image segmentation with prompts: SAM2 used as an image model.

    predictor = ImagePredictor(model)
    predictor.set_image(rgb)                       # H x W x 3 uint8, encoded once
    pred = predictor.predict(points=[[120, 80]], labels=[1])
    pred.masks                                     # [M, H, W] bool at the image's resolution

Prompts are in the image's pixel coordinates ((x, y), boxes as (x0, y0, x1, y1)). A box is
fed as two corner clicks before the points, as SAM2 was trained. `mask_input` is the
low-resolution logits of an earlier prediction (`pred.low_res_logits[i]`), to refine it.
Masks come from the decoder's low-resolution logits upsampled to the image size; when the
model's object score says "no object", the masks are empty (as in video tracking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from surgray.model.sam2.frame_types import FrameFeatures
from surgray.model.sam2.network import SAM2Model
from surgray.model.sam2.preprocess import check_rgb_image, scale_box, scale_points, to_model_input


@dataclass
class ImagePrediction:
    masks: np.ndarray  # [M, H, W] bool, at the image's resolution (M = 3 with multimask, else 1)
    logits: np.ndarray  # [M, H, W] float32 mask logits at the image's resolution
    low_res_logits: np.ndarray  # [M, S/4, S/4] float32, reusable as `mask_input`
    predicted_iou: np.ndarray  # [M] float32
    object_score: float  # object-score logit (> 0: object present)

    @property
    def best(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.predicted_iou))


class ImagePredictor:
    """Encodes one image, then answers any number of prompts on it."""

    def __init__(self, model: SAM2Model) -> None:
        self.model = model
        self._features: FrameFeatures | None = None
        self._image_hw: tuple[int, int] | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image set, or a RuntimeError when none is."""
        if self._image_hw is None:
            raise RuntimeError("no image set: call set_image(rgb) first")
        return self._image_hw

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an H x W x 3 uint8 RGB image."""
        rgb = check_rgb_image(image)
        cfg = self.model.cfg
        x = to_model_input(rgb, cfg.image_size, cfg.image_mean, cfg.image_std, self.model.device)
        self._features = self.model.frame_features(self.model.encode_images(x), 0)
        self._image_hw = (rgb.shape[0], rgb.shape[1])

    @torch.inference_mode()
    def predict(
        self,
        points: np.ndarray | list | None = None,
        labels: np.ndarray | list | None = None,
        box: np.ndarray | list | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = True,
    ) -> ImagePrediction:
        """Masks for one object described by clicks, a box and/or an earlier mask's logits."""
        height, width = self.image_size
        if points is None and box is None and mask_input is None:
            raise ValueError("empty prompt: give points (with labels), a box or mask_input")
        device = self.model.device
        clicks = self._clicks(points, labels, box, (height, width))
        mask_logits = self._mask_input(mask_input)
        out = self.model.predict_masks(
            self._features,
            None if clicks is None else (clicks[0][None].to(device), clicks[1][None].to(device)),
            None if mask_logits is None else mask_logits.to(device),
            multimask,
        )
        low = out.low_res_multimasks[0].float()
        logits = F.interpolate(
            low[None], size=(height, width), mode="bilinear", align_corners=False
        )[0]
        return ImagePrediction(
            masks=(logits > 0).cpu().numpy(),
            logits=logits.cpu().numpy(),
            low_res_logits=low.clamp(-32.0, 32.0).cpu().numpy(),
            predicted_iou=out.multimask_iou[0].float().cpu().numpy(),
            object_score=float(out.object_score_logits.reshape(-1)[0]),
        )

    def _clicks(self, points, labels, box, hw: tuple[int, int]):
        """Box corners (labels 2, 3) then clicks, in model-input pixels; None without either."""
        height, width = hw
        size = self.model.image_size
        coords, kinds = [], []
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.shape != (4,):
                raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
            x0, y0, x1, y1 = b
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(
                    f"box {b.tolist()} must satisfy 0 <= x0 < x1 <= {width} and "
                    f"0 <= y0 < y1 <= {height} (the image is {width}x{height})"
                )
            coords.append(scale_box(b, hw, size).reshape(2, 2))
            kinds.append(torch.tensor([2, 3], dtype=torch.int32))
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is not None:
            p = np.asarray(points, dtype=np.float64)
            lab = np.asarray(labels)
            if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] == 0:
                raise ValueError(f"points must be [N, 2] (x, y) with N >= 1, got shape {p.shape}")
            if lab.shape != (p.shape[0],):
                raise ValueError(f"labels must be [{p.shape[0]}], got shape {lab.shape}")
            if not np.isin(lab, (0, 1)).all():
                raise ValueError(
                    f"labels must be 1 (object) or 0 (background), got {np.unique(lab).tolist()}"
                )
            outside = ~((p[:, 0] >= 0) & (p[:, 0] < width) & (p[:, 1] >= 0) & (p[:, 1] < height))
            if outside.any():
                raise ValueError(
                    f"points {p[outside].tolist()} lie outside the {width}x{height} image"
                )
            coords.append(scale_points(p, hw, size))
            kinds.append(torch.as_tensor(lab.astype(np.int32)))
        if not coords:
            return None
        return torch.cat(coords).float(), torch.cat(kinds)

    def _mask_input(self, mask_input) -> torch.Tensor | None:
        if mask_input is None:
            return None
        side = self.model.image_size // 4
        m = np.asarray(mask_input)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != (side, side) or not np.issubdtype(m.dtype, np.floating):
            raise ValueError(
                f"mask_input must be float low-resolution logits of shape [{side}, {side}] "
                f"(an earlier prediction's low_res_logits[i]), got {m.dtype} {m.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
