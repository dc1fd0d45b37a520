"""Checks and conversions at the tracker's door: indices, frames, policy configs, encoding.

Every check runs before the tracker changes any state, so a rejected call leaves the video
usable, and every error names the video and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from surgray.model.sam2.frame_types import FrameFeatures
from surgray.model.sam2.network import SAM2Model
from surgray.model.sam2.preprocess import check_rgb_image, to_model_input
from surgray.model.sam2.types import BackboneOutput
from surgray.tracking.memory.config import MemoryPolicyConfig, parse_policy_config
from surgray.tracking.state import TrackerStateError, VideoState


def check_index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def check_frame_idx(state: VideoState, frame_idx: Any) -> int:
    index = check_index(frame_idx, "frame_idx")
    if index < 0 or (state.num_frames is not None and index >= state.num_frames):
        limit = f" of {state.num_frames} frames" if state.num_frames is not None else ""
        raise ValueError(f"frame_idx {index} is outside video {state.video_id!r}{limit}")
    return index


def next_frame_index(state: VideoState) -> int:
    """The index the next step gives its frame, or a TrackerStateError past the video's end."""
    index = state.next_frame_idx
    if index < 0 or (state.num_frames is not None and index >= state.num_frames):
        edge = "start" if state.reverse else "end"
        raise TrackerStateError(
            f"video {state.video_id!r} is finished: stepping past its {edge} (next frame "
            f"{index}, {state.num_frames} frames); seek back or start a new video"
        )
    return index


def check_frame(state: VideoState, frame: Any) -> np.ndarray:
    """The frame as HxWx3 uint8 RGB of the video's size, or an error saying what differs."""
    image = check_rgb_image(frame, f"frame of video {state.video_id!r}")
    if tuple(image.shape[:2]) != state.frame_size:
        raise ValueError(
            f"frame of video {state.video_id!r} is {tuple(image.shape[:2])} (H, W) but the "
            f"video's frames are {state.frame_size}"
        )
    return image


def policy_for_model(
    policy_cfg: MemoryPolicyConfig | dict | None, model: SAM2Model
) -> MemoryPolicyConfig:
    """The policy config with the numbers it shares with the model filled in, and checked."""
    mem, ptr = model.cfg.memory, model.cfg.object_pointer
    shared = {
        "num_maskmem": mem.num_maskmem,
        "max_obj_ptrs": ptr.max_obj_ptrs_in_encoder,
        "use_obj_ptrs": ptr.use_obj_ptrs_in_encoder,
        "temporal_stride": mem.memory_temporal_stride_for_eval,
        "max_cond_frames_in_attn": mem.max_cond_frames_in_attn,
        "only_past_pointers": ptr.only_obj_ptrs_in_the_past_for_eval,
    }
    if policy_cfg is None or isinstance(policy_cfg, dict):
        data = {"name": "recent", **(policy_cfg or {})}
        for key, value in shared.items():
            data.setdefault(key, value)
        cfg = parse_policy_config(data)
    else:
        cfg = parse_policy_config(policy_cfg)
    if mem.num_maskmem > 0 and cfg.num_maskmem != mem.num_maskmem:
        raise ValueError(
            f"policy num_maskmem {cfg.num_maskmem} != the model's {mem.num_maskmem} "
            "(its maskmem_tpos_enc rows)"
        )
    if cfg.use_obj_ptrs and cfg.max_obj_ptrs > ptr.max_obj_ptrs_in_encoder:
        raise ValueError(
            f"policy max_obj_ptrs {cfg.max_obj_ptrs} exceeds the model's "
            f"max_obj_ptrs_in_encoder {ptr.max_obj_ptrs_in_encoder}"
        )
    return cfg


# How frames reach the model's square input. Meta's SAM2VideoPredictor loads JPEG folders with
# PIL's bicubic resize on 8-bit pixels; its SAM2ImagePredictor (and our training) resize float
# pixels bilinearly with antialiasing. On 320x240 frames the two inputs differ by up to 12 grey
# levels, enough to flip thousands of mask pixels at 512 px, so each entry point names its choice.
RESIZE_MODES = ("bilinear_antialias", "bicubic_uint8")


def check_resize(value: Any) -> str:
    if value not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {value!r}")
    return value


def resize_bicubic_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 with PIL's bicubic filter (the video predictor's
    JPEG loader: PIL's default `resize` filter, rounded back to 8 bits)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def model_input(
    image: np.ndarray, cfg: Any, device: torch.device, resize: str = "bilinear_antialias"
) -> torch.Tensor:
    """One frame as the model's normalised [1, 3, S, S] input, resized the `resize` way."""
    if resize == "bicubic_uint8":
        image = resize_bicubic_uint8(image, cfg.image_size)
    return to_model_input(image, cfg.image_size, cfg.image_mean, cfg.image_std, device)


def encode_frames(
    model: SAM2Model,
    encode: Callable[[torch.Tensor], BackboneOutput],
    images: list[np.ndarray],
    device: torch.device,
    resize: str = "bilinear_antialias",
) -> list[FrameFeatures]:
    """Features of K frames (any sizes) from ONE image-encoder pass."""
    cfg = model.cfg
    batch = torch.cat([model_input(im, cfg, device, resize) for im in images])
    backbone = encode(batch)
    features = [model.frame_features(backbone, k) for k in range(len(images))]
    if len(images) > 1:
        # Own copies: a cached view would keep the whole batch alive.
        features = [
            FrameFeatures(
                f.image_embed.clone(), f.image_pos.clone(), [t.clone() for t in f.high_res]
            )
            for f in features
        ]
    return features


_AUTOCAST_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "none": None}


def autocast_dtype_for(value: torch.dtype | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a tracker runs under: "auto" is bf16 on CUDA and none on CPU."""
    if value == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if isinstance(value, str):
        if value not in _AUTOCAST_NAMES:
            raise ValueError(f"autocast_dtype must be 'auto', {sorted(_AUTOCAST_NAMES)} or a dtype")
        return _AUTOCAST_NAMES[value]
    return value
