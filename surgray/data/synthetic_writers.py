"""Save synthetic clips as MP4, Ref-EndoVis/DAVIS-style folders or SA-V-style JSON, and make
whole seeded datasets. Paths may be local or fsspec URIs.

Folder layouts written (one `split` folder per split, e.g. train/ and valid/):

    ref-endovis: JPEGImages/<video>/00000.png, Annotations/<video>/00000.png (palette, value =
                 object id), Meta/<video>.json, meta_expressions.json
    davis:       the same with JPEG frames and no meta_expressions.json (SA-SV-style masklets)
    sav:         <video>.mp4 and <video>_manual.json (COCO RLE per annotated frame and object)
    mp4:         <video>.mp4 only

Meta/<video>.json follows Ref-EndoVis: info.category[obj_id] and frames[frame][obj_id] =
{action, location, unique}, listing the objects visible in that frame; `info.synthetic` adds the
seed and the events. `masklet_category` in the SA-V JSON is our addition (SA-V has none).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from surgray.data.synthetic import SyntheticClip, SyntheticClipConfig, generate_clip
from surgray.io.encode import WrittenVideo, png_bytes, write_video
from surgray.io.masks import davis_palette, encode_rle
from surgray.io.storage import LOCAL, Storage

Layout = Literal["ref-endovis", "davis", "sav", "mp4"]
LAYOUTS: tuple[str, ...] = ("ref-endovis", "davis", "sav", "mp4")
SAV_ANNOTATION_STRIDE = 4  # SA-V annotates its 24 fps videos at 6 fps


def join_uri(*parts: str) -> str:
    head = parts[0].rstrip("/")
    return "/".join([head, *(p.strip("/") for p in parts[1:])])


def put_bytes(uri: str, payload: bytes, *, storage: Storage) -> None:
    storage.write_bytes(uri, payload)


def put_json(uri: str, payload: Any, *, storage: Storage) -> None:
    put_bytes(uri, json.dumps(payload, indent=1, sort_keys=False).encode(), storage=storage)


def frame_name(index: int) -> str:
    return f"{index:05d}"


def _jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def clip_meta(clip: SyntheticClip) -> dict[str, Any]:
    """The Ref-EndoVis Meta/<video>.json content of a clip."""
    frames: dict[str, dict[str, dict[str, Any]]] = {}
    for t in range(clip.num_frames):
        entry = {}
        for n, info in enumerate(clip.objects):
            if clip.visible_pixels[t, n] > 0:
                entry[str(info.obj_id)] = {
                    "action": int(clip.actions[t, n]),
                    "location": int(clip.locations[t, n]),
                    "unique": clip.unique(info.obj_id),
                }
        frames[frame_name(t)] = entry
    events = [
        {"kind": e.kind, "start": e.start, "end": e.end, "obj_ids": list(e.obj_ids)}
        for e in clip.events
    ]
    return {
        "info": {
            "category": {str(o.obj_id): o.category for o in clip.objects},
            "synthetic": {"seed": clip.seed, "fps": clip.fps, "events": events},
        },
        "frames": frames,
    }


def expressions_entry(clip: SyntheticClip) -> dict[str, Any]:
    """One video's entry of Ref-EndoVis valid/meta_expressions.json."""
    return {
        "expressions": {
            e.exp_id: {"exp": e.text, "obj_id": str(e.obj_id)} for e in clip.expressions
        },
        "frames": [frame_name(t) for t in range(clip.num_frames)],
        "first_frame": {e.exp_id: e.first_frame for e in clip.expressions},
    }


def write_clip_folder(
    clip: SyntheticClip,
    split_root: str,
    video_id: str,
    *,
    image_format: Literal["png", "jpg"] = "png",
    storage: Storage = LOCAL,
) -> None:
    """Frames, palette-PNG annotations and Meta/<video>.json under one split folder."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    palette = davis_palette()
    for t in range(clip.num_frames):
        name = frame_name(t)
        image = png_bytes(clip.frames[t]) if image_format == "png" else _jpeg_bytes(clip.frames[t])
        put_bytes(
            join_uri(split_root, "JPEGImages", video_id, f"{name}.{image_format}"),
            image,
            storage=storage,
        )
        mask = png_bytes(clip.masks[t], palette=palette)
        put_bytes(
            join_uri(split_root, "Annotations", video_id, f"{name}.png"), mask, storage=storage
        )
    put_json(join_uri(split_root, "Meta", f"{video_id}.json"), clip_meta(clip), storage=storage)


def write_clip_video(
    clip: SyntheticClip,
    uri: str,
    *,
    codec: str = "libx264",
    crf: int = 18,
    storage: Storage = LOCAL,
) -> WrittenVideo:
    """Encode the clip's frames (masks are not in the video)."""
    return write_video(uri, iter(clip.frames), clip.fps, codec=codec, crf=crf, storage=storage)


def sav_annotation(
    clip: SyntheticClip, video_id: str, split: str, stride: int = SAV_ANNOTATION_STRIDE
) -> dict[str, Any]:
    """SA-V `<video>_manual.json` content: masklet[k][j] is the RLE of object j at frame k*stride."""
    if stride < 1:
        raise ValueError(f"annotation stride must be >= 1, got {stride}")
    ids = [o.obj_id for o in clip.objects]
    masklet = []
    for t in range(0, clip.num_frames, stride):
        stack = np.stack([clip.masks[t] == obj_id for obj_id in ids])
        masklet.append([dict(rle) for rle in encode_rle(stack)])
    height, width = clip.masks.shape[1:]
    return {
        "video_id": video_id,
        "video_duration": clip.num_frames / clip.fps,
        "video_frame_count": clip.num_frames,
        "video_height": height,
        "video_width": width,
        "video_resolution": height * width,
        "video_split": split,
        "masklet": masklet,
        "masklet_id": ids,
        "masklet_num": len(ids),
        "masklet_type": ["manual"] * len(ids),
        "masklet_category": [o.category for o in clip.objects],
    }


@dataclass(frozen=True)
class WrittenClip:
    video_id: str
    split: str
    seed: int
    num_frames: int
    categories: dict[int, str]
    events: list[str]


@dataclass(frozen=True)
class SyntheticDataset:
    root: str
    layout: str
    videos: list[WrittenClip]

    def split(self, name: str) -> list[WrittenClip]:
        return [v for v in self.videos if v.split == name]


def _varied(base: SyntheticClipConfig, rng: np.random.Generator) -> SyntheticClipConfig:
    """Per-video variety: object counts and which events happen."""
    instruments = int(rng.integers(1, 5))
    return base.model_copy(
        update={
            "num_instruments": instruments,
            "num_tissues": int(rng.integers(0, 3)),
            "instrument_categories": None,
            "tissue_categories": None,
            "leave_and_return": base.leave_and_return and bool(rng.random() < 0.8),
            "occlusion": base.occlusion and instruments >= 2 and bool(rng.random() < 0.8),
            "smoke": base.smoke and bool(rng.random() < 0.5),
            "motion_blur": base.motion_blur and bool(rng.random() < 0.5),
        }
    )


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    num_videos: int,
    *,
    seed: int = 0,
    layout: Layout = "ref-endovis",
    valid_fraction: float = 0.25,
    config: SyntheticClipConfig | None = None,
    vary: bool = True,
    storage: Storage = LOCAL,
) -> SyntheticDataset:
    """Write `num_videos` seeded clips under root/train and root/valid, one clip in memory at a
    time, plus root/synthetic_manifest.json. Same arguments -> byte-identical files."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if not 0.0 <= valid_fraction <= 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1], got {valid_fraction}")
    root = os.fspath(root)
    base = config or SyntheticClipConfig()
    order = np.random.default_rng(seed).permutation(num_videos)
    n_valid = int(round(num_videos * valid_fraction))
    if valid_fraction > 0 and num_videos >= 2:
        n_valid = min(max(n_valid, 1), num_videos - 1)
    valid = set(order[:n_valid].tolist())
    written, entries = [], {"train": {}, "valid": {}}
    for index in range(num_videos):
        video_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        cfg = _varied(base, np.random.default_rng(video_seed)) if vary else base
        clip = generate_clip(cfg, seed=video_seed)
        split = "valid" if index in valid else "train"
        video_id = f"synth_{index:04d}"
        split_root = join_uri(root, split)
        if layout in ("ref-endovis", "davis"):
            image_format = "png" if layout == "ref-endovis" else "jpg"
            write_clip_folder(
                clip,
                split_root,
                video_id,
                image_format=image_format,
                storage=storage,
            )
            entries[split][video_id] = expressions_entry(clip)
        else:
            write_clip_video(clip, join_uri(split_root, f"{video_id}.mp4"), storage=storage)
            if layout == "sav":
                put_json(
                    join_uri(split_root, f"{video_id}_manual.json"),
                    sav_annotation(clip, video_id, split),
                    storage=storage,
                )
        written.append(
            WrittenClip(
                video_id,
                split,
                video_seed,
                clip.num_frames,
                {o.obj_id: o.category for o in clip.objects},
                [e.kind for e in clip.events],
            )
        )
    if layout == "ref-endovis":
        for split, videos in entries.items():
            if videos:
                put_json(
                    join_uri(root, split, "meta_expressions.json"),
                    {"videos": videos},
                    storage=storage,
                )
    manifest = {
        "layout": layout,
        "seed": seed,
        "config": base.model_dump(mode="json"),
        "vary": vary,
        "videos": [
            {
                "video_id": v.video_id,
                "split": v.split,
                "seed": v.seed,
                "num_frames": v.num_frames,
                "categories": {str(k): c for k, c in v.categories.items()},
                "events": v.events,
            }
            for v in written
        ],
    }
    put_json(join_uri(root, "synthetic_manifest.json"), manifest, storage=storage)
    return SyntheticDataset(root=root, layout=layout, videos=written)
