"""Image effects of the synthetic scene: instrument shadows, endoscope vignetting, surgical
smoke and motion blur. All work on uint8 RGB frames with OpenCV, so they stay cheap per frame."""

from __future__ import annotations

import math

import cv2
import numpy as np


def cast_shadow(
    image: np.ndarray, occluders: np.ndarray, offset: tuple[int, int], strength: float = 0.35
) -> np.ndarray:
    """Darken `image` under a blurred, shifted copy of the 0/255 instrument mask."""
    shifted = np.zeros_like(occluders)
    dy, dx = offset
    shifted[dy:, dx:] = occluders[: occluders.shape[0] - dy, : occluders.shape[1] - dx]
    soft = cv2.GaussianBlur(shifted, (0, 0), 3.0)
    gain = 255 - ((soft.astype(np.uint16) * int(strength * 256)) >> 8).astype(np.uint8)
    return cv2.multiply(image, cv2.merge([gain, gain, gain]), scale=1 / 255)


def vignette(height: int, width: int, strength: float = 0.35) -> np.ndarray:
    """Endoscope light falloff as an [H, W, 3] uint8 gain (255 = 1) to use with cv2.multiply."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xs - width / 2) / (width / 2)) ** 2 + ((ys - height / 2) / (height / 2)) ** 2
    gain = np.round(255 * (1.0 - strength * np.clip(r2 / 2, 0, 1))).astype(np.uint8)
    return np.repeat(gain[..., None], 3, axis=2)


def add_smoke(image: np.ndarray, haze: np.ndarray, level: float) -> np.ndarray:
    """Blend towards grey where `haze` (values in [0, 1]) is dense; `level` scales it all."""
    alpha = (level * (0.55 + 0.45 * haze))[..., None]
    smoke = np.float32(206.0)
    return (image.astype(np.float32) * (1 - alpha) + smoke * alpha).astype(np.uint8)


def motion_blur(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Blur along a line of `length` pixels at `angle` radians, as a fast camera move does."""
    size = max(3, length | 1)
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    cv2.line(
        kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA
    )
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
