"""Image preprocessing for the SAM2 network (torch only; no torchvision).

RGB uint8 frames become float tensors at `image_size` x `image_size` (bilinear, antialiased
when shrinking), scaled to [0, 1] and normalised with the ImageNet mean and std, as the
reference does. Prompt coordinates follow the same stretch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_rgb_image(image: object, name: str = "image") -> np.ndarray:
    """The image as an H x W x 3 uint8 array, or a ValueError/TypeError saying what is wrong."""
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array (H x W x 3 uint8 RGB), got a torch tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array (H x W x 3 uint8 RGB), got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (0..255 RGB), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape H x W x 3 (RGB), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def to_model_input(
    images: np.ndarray | Sequence[np.ndarray] | torch.Tensor,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """RGB uint8 frames -> [K, 3, S, S] float32, normalised.

    Accepts one H x W x 3 array, a K x H x W x 3 array, a list of H x W x 3 arrays of one
    size, or a uint8 tensor laid out the same way.
    """
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {images.dtype}")
        batch = images if images.ndim == 4 else images[None]
    else:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            frames = [check_rgb_image(f, f"frame {i}") for i, f in enumerate(images)]
        elif isinstance(images, np.ndarray):
            frames = [check_rgb_image(images)]
        else:
            frames = [check_rgb_image(f, f"frame {i}") for i, f in enumerate(images)]
            if not frames:
                raise ValueError("no frames given")
            shapes = {f.shape for f in frames}
            if len(shapes) > 1:
                raise ValueError(f"frames differ in size: {sorted(shapes)}")
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"frames must be [K, H, W, 3] RGB, got {list(batch.shape)}")
    x = batch.to(device=device).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (image_size, image_size):
        shrinking = x.shape[-2] > image_size or x.shape[-1] > image_size
        x = F.interpolate(
            x,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=shrinking,
        )
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean_t) / std_t


def scale_points(
    points: torch.Tensor | np.ndarray, original_hw: tuple[int, int], image_size: int
) -> torch.Tensor:
    """(x, y) pixel coordinates of the original image -> model-input pixels. [..., 2]."""
    pts = torch.as_tensor(points, dtype=torch.float32)
    height, width = original_hw
    scale = torch.tensor([image_size / width, image_size / height], dtype=torch.float32)
    return pts * scale.to(pts.device)


def scale_box(
    box: torch.Tensor | np.ndarray, original_hw: tuple[int, int], image_size: int
) -> torch.Tensor:
    """(x0, y0, x1, y1) of the original image -> model-input pixels, [4]."""
    corners = torch.as_tensor(box, dtype=torch.float32).reshape(2, 2)
    return scale_points(corners, original_hw, image_size).reshape(4)
