"""Training videos and clips: open a split, and turn a `ClipSpec` into model-ready tensors.

A `TrainVideo` is one video reduced to its annotated frames (SA-V-style sets annotate every
4th frame; clips are built from annotated frames only, as SAM2 trains). It is backed either by
a dataset reader's `VideoSample` (SA-SV, Ref-EndoVis, DAVIS folders, local or object storage)
or by the synthetic generator (clips drawn from a seed when first needed, a few kept in memory).

`load_clip` decodes the clip's frames, flips them when the spec says so, picks its objects
(`samplers.choose_objects` on the spec's object frame) and resizes frames and masks to the
model's square input: frames bilinearly (`to_model_input`), masks by nearest neighbour, so
targets stay binary. Masks are then [T, N, S, S] bool in the order of `object_ids`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from surgray.data.files import DatasetError
from surgray.data.sample import VideoDataset, VideoSample
from surgray.io.storage import Storage
from surgray.train.config import DataSection, SyntheticSourceSection
from surgray.train.samplers import ClipKind, ClipSpec, choose_objects

SPLIT_SALT = {"train": 0, "valid": 1, "test": 2}


@dataclass
class TrainingClip:
    """A clip ready for `surgray.train.step.run_clip`."""

    kind: ClipKind
    images: torch.Tensor  # [T, 3, S, S] float, normalised
    masks: torch.Tensor  # [T, N, S, S] bool
    object_ids: tuple[int, ...]
    long_term: tuple[int, ...] = ()  # clip positions of DiveMem long-term frames
    context: tuple[int, ...] = ()  # clip positions of referring context frames
    anchor: int | None = None  # clip position of the referring anchor frame
    expressions: tuple[str, ...] = ()  # referring clips: one text per object
    video_id: str = ""
    categories: tuple[str | None, ...] = ()  # one category name per object (None: unknown)

    @property
    def num_frames(self) -> int:
        return self.images.shape[0]

    @property
    def num_objects(self) -> int:
        return self.masks.shape[1]

    def category_ids(self, names: Sequence[str]) -> torch.Tensor:
        """[N] long: each object's index in `names` (TSL's category list), -1 when its
        category is unknown or not listed (tissue when only instruments are named)."""
        index = {name: i for i, name in enumerate(names)}
        padded = list(self.categories) + [None] * (self.num_objects - len(self.categories))
        ids = [index.get(name, -1) if name is not None else -1 for name in padded]
        return torch.tensor(ids[: self.num_objects], dtype=torch.long, device=self.masks.device)

    def to(self, device: torch.device | str) -> TrainingClip:
        self.images = self.images.to(device, non_blocking=True)
        self.masks = self.masks.to(device, non_blocking=True)
        return self


class TrainVideo:
    """One video as training sees it: annotated frames only, addressed by position."""

    video_id: str
    num_frames: int

    def load(self, positions: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Frames [T, H, W, 3] uint8 and id masks [T, H, W] uint8 at those positions."""
        raise NotImplementedError

    def expression(self, obj_id: int) -> str | None:
        return None

    def category(self, obj_id: int) -> str | None:
        """The object's canonical category name (`surgray.data.categories`), None if unknown."""
        return None


class SampleVideo(TrainVideo):
    """A dataset reader's `VideoSample`."""

    def __init__(self, sample: VideoSample) -> None:
        self.sample = sample
        self.video_id = sample.video_id
        self.frame_index = tuple(sample.annotated_frames)
        self.num_frames = len(self.frame_index)
        self._texts = {e.obj_id: e.text for e in reversed(sample.expressions)}

    def load(self, positions: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        labeled = [self.sample.load(self.frame_index[p]) for p in positions]
        return np.stack([f.image for f in labeled]), np.stack([f.mask for f in labeled])

    def expression(self, obj_id: int) -> str | None:
        return self._texts.get(obj_id)

    def category(self, obj_id: int) -> str | None:
        try:
            return self.sample.object(obj_id).category
        except KeyError:
            return None


class SyntheticVideo(TrainVideo):
    """A clip of the synthetic generator, drawn from its seed when first loaded."""

    _CACHE: OrderedDict[tuple, object] = OrderedDict()
    _CACHE_SIZE = 8

    def __init__(self, video_id: str, config, seed: int) -> None:
        self.video_id = video_id
        self.config = config
        self.seed = seed
        self.num_frames = config.num_frames

    @property
    def clip(self):
        from surgray.data.synthetic import generate_clip

        key = (self.config, self.seed)
        cache = SyntheticVideo._CACHE
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        clip = generate_clip(self.config, seed=self.seed)
        cache[key] = clip
        while len(cache) > SyntheticVideo._CACHE_SIZE:
            cache.popitem(last=False)
        return clip

    def load(self, positions: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        clip = self.clip
        index = list(positions)
        return clip.frames[index], clip.masks[index]

    @cached_property
    def _texts(self) -> dict[int, str]:
        return {e.obj_id: e.text for e in reversed(self.clip.expressions)}

    def expression(self, obj_id: int) -> str | None:
        return self._texts.get(obj_id)

    def category(self, obj_id: int) -> str | None:
        for info in self.clip.objects:
            if info.obj_id == obj_id:
                return info.category
        return None


def synthetic_videos(section: SyntheticSourceSection, split: str) -> list[SyntheticVideo]:
    """The seeded synthetic videos of a split: seeds differ between splits."""
    from surgray.data.synthetic import SyntheticClipConfig

    salt = SPLIT_SALT.get(split)
    if salt is None:
        raise DatasetError(f"synthetic data has splits {sorted(SPLIT_SALT)}, not {split!r}")
    count = {
        "train": section.train_videos,
        "valid": section.valid_videos,
        "test": section.test_videos,
    }[split]
    base = SyntheticClipConfig(
        num_frames=section.num_frames,
        height=section.height,
        width=section.width,
        leave_and_return=section.events,
        occlusion=section.events,
        smoke=section.events,
        motion_blur=section.events,
    )
    videos = []
    for index in range(count):
        seed = int(np.random.SeedSequence([section.seed, salt, index]).generate_state(1)[0])
        config = base
        if section.vary:
            rng = np.random.default_rng(seed)
            instruments = int(rng.integers(1, 4))
            config = base.model_copy(
                update={
                    "num_instruments": instruments,
                    "num_tissues": int(rng.integers(0, 3)),
                    "occlusion": base.occlusion and instruments >= 2,
                }
            )
        videos.append(SyntheticVideo(f"synth_{split}_{index:04d}", config, seed))
    return videos


def open_dataset(section: DataSection, split: str, *, storage: Storage) -> VideoDataset:
    """The dataset reader of a split (not for synthetic data)."""
    if section.source == "sasv":
        from surgray.data.sasv import open_sasv

        return open_sasv(section.root, split, storage=storage)
    if section.source == "ref_endovis":
        from surgray.data.ref_endovis import RefEndoVisDataset

        return RefEndoVisDataset(section.root, split, storage=storage)
    if section.source == "davis":
        from surgray.data.davis import DavisDataset

        return DavisDataset(section.root, split, storage=storage)
    raise ValueError(f"no dataset reader for source {section.source!r}")


def open_videos(section: DataSection, split: str, *, storage: Storage) -> list[TrainVideo]:
    """Every video of a split, reduced to its annotated frames; errors name the split."""
    if section.source == "synthetic":
        return list(synthetic_videos(section.synthetic, split))
    dataset = open_dataset(section, split, storage=storage)
    if len(dataset) == 0:
        raise DatasetError(f"{section.root} split {split!r}: no videos (empty split)")
    return [SampleVideo(sample) for sample in dataset]


def _resize_ids(ids: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if ids.shape == (size, size):
        return ids
    return cv2.resize(ids, (size, size), interpolation=cv2.INTER_NEAREST)


def load_clip(
    video: TrainVideo,
    spec: ClipSpec,
    image_size: int,
    max_objects: int,
    rng: np.random.Generator,
    allowed_ids: tuple[int, ...] | None = None,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
) -> TrainingClip | None:
    """The tensors of a clip, or None when no allowed object is visible on its object frame
    (the caller draws another clip)."""
    from surgray.model.sam2.preprocess import to_model_input

    frames, ids = video.load(spec.frames)
    if spec.flip:
        frames, ids = frames[:, :, ::-1], ids[:, :, ::-1]
    visible = [int(v) for v in np.unique(ids[spec.object_frame]) if v != 0]
    if allowed_ids is not None:
        visible = [v for v in visible if v in allowed_ids]
    if spec.kind == "referring":
        visible = [v for v in visible if video.expression(v) is not None]
    if not visible:
        return None
    objects = choose_objects(visible, max_objects, rng)
    images = to_model_input(np.ascontiguousarray(frames), image_size, mean, std)
    resized = np.stack([_resize_ids(np.ascontiguousarray(m), image_size) for m in ids])
    masks = torch.from_numpy(np.stack([resized == obj for obj in objects], axis=1))
    texts = tuple(video.expression(o) or "" for o in objects) if spec.kind == "referring" else ()
    return TrainingClip(
        kind=spec.kind,
        images=images,
        masks=masks,
        object_ids=objects,
        long_term=spec.long_term,
        context=spec.context,
        anchor=spec.anchor,
        expressions=texts,
        video_id=video.video_id,
        categories=tuple(video.category(o) for o in objects),
    )
