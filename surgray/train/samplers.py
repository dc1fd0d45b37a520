"""Which frames and objects make a training clip (indices only; loading is `clip_data`).

Clip kinds, each a published recipe (SAM2; ReSurgSAM2; SAM2S's DiveMem):

- `sam2` (SAM2): `clip_length` frames at a random stride in [1, `max_stride`] from a random
  start; played backwards with `reverse_prob`. Objects: up to `max_objects` of those visible
  in the clip's first frame.
- `hybrid` (SAM2S DiveMem, §4.2): `hybrid_random_frames` frames drawn from the whole video
  before a run of `hybrid_consecutive_frames` consecutive frames. The earliest drawn frame is
  the conditioning frame, the other drawn frames are long-term memories (they get the learned
  long-term temporal embeddings), the consecutive run is tracked. Clip order: conditioning,
  long-term (in time order), consecutive run.
- `referring` (ReSurgSAM2, §3.5): a window of `referring_context_window + 1 + tracking + 2`
  consecutive frames, reversed with `referring_reverse_prob`; the anchor is the frame after the
  context window, the context frames are drawn among the `referring_context_window` before it,
  and (for tracking clips) the `referring_tracking_frames` after it are tracked. Referring-only
  clips stop at the anchor. Objects must be visible in the anchor.
- `image`: one annotated frame (image:video mixing, §4.5).

Frames are positions in a video's list of annotated frames. Randomness comes only from the
`numpy.random.Generator` passed in, so a seed fixes the clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from surgray.train.config import SamplingSection

ClipKind = Literal["sam2", "hybrid", "referring", "image"]


@dataclass(frozen=True)
class ClipSpec:
    """One sampled clip: frames in processing order and the roles some of them play.

    `long_term`, `context` and `anchor` are positions in `frames` (not video frames).
    """

    kind: ClipKind
    video: int  # index of the video in the training set
    frames: tuple[int, ...]  # annotated-frame positions in the video, in clip order
    long_term: tuple[int, ...] = ()
    context: tuple[int, ...] = ()
    anchor: int | None = None
    reversed: bool = False
    flip: bool = False
    # Objects are chosen on the frame `object_frame` (a position in `frames`).
    object_frame: int = 0
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def _draw(rng: np.random.Generator, probability: float) -> bool:
    return probability > 0 and bool(rng.random() < probability)


def sample_sam2_frames(
    num_frames: int, clip_length: int, max_stride: int, rng: np.random.Generator
) -> tuple[int, ...]:
    """`clip_length` frames (fewer if the video is shorter) at a random stride, in time order."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one annotated frame, got {num_frames}")
    length = min(clip_length, num_frames)
    # Only strides whose clip fits in the video.
    widest = max(1, min(max_stride, (num_frames - 1) // max(length - 1, 1)))
    stride = int(rng.integers(1, widest + 1))
    span = (length - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1))
    return tuple(start + k * stride for k in range(length))


def sample_hybrid_frames(
    num_frames: int, num_random: int, num_consecutive: int, rng: np.random.Generator
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(frames in clip order, long-term positions in the clip) of a DiveMem hybrid clip.

    The consecutive run starts at frame s >= num_random, so that the drawn frames (distinct,
    uniform over [0, s)) all precede it.
    """
    if num_frames < num_random + num_consecutive:
        raise ValueError(
            f"a hybrid clip needs {num_random + num_consecutive} frames, the video has {num_frames}"
        )
    start = int(rng.integers(num_random, num_frames - num_consecutive + 1))
    drawn = np.sort(rng.choice(start, size=num_random, replace=False))
    frames = tuple(int(f) for f in drawn) + tuple(range(start, start + num_consecutive))
    return frames, tuple(range(1, num_random))


@dataclass(frozen=True)
class ReferringFrames:
    frames: tuple[int, ...]  # context frames, anchor, tracking frames (in playing order)
    context: tuple[int, ...]  # positions in `frames`
    anchor: int
    reversed: bool


def sample_referring_frames(
    num_frames: int,
    context_frames: int,
    context_window: int,
    tracking_frames: int,
    reverse_prob: float,
    rng: np.random.Generator,
) -> ReferringFrames:
    """A ReSurgSAM2 clip; tracking frames are cut short on short videos (0 = referring-only)."""
    needed = context_window + 1
    if num_frames < needed:
        raise ValueError(
            f"a referring clip needs at least {needed} frames (context window + anchor), "
            f"the video has {num_frames}"
        )
    tracking = min(tracking_frames, num_frames - needed)
    # The buffer of 2 frames after the tracking frames, when the video has room for it.
    window = min(needed + tracking + 2, num_frames)
    start = int(rng.integers(0, num_frames - window + 1))
    played = list(range(start, start + window))
    reverse = _draw(rng, reverse_prob)
    if reverse:
        played.reverse()
    chosen = np.sort(rng.choice(context_window, size=context_frames, replace=False))
    context = [played[int(i)] for i in chosen]
    anchor = played[context_window]
    after = played[context_window + 1 : context_window + 1 + tracking]
    frames = tuple(context) + (anchor,) + tuple(after)
    return ReferringFrames(frames, tuple(range(len(context))), len(context), reverse)


def choose_objects(
    visible_ids: Sequence[int], max_objects: int, rng: np.random.Generator
) -> tuple[int, ...]:
    """Up to `max_objects` distinct ids drawn from those visible, in ascending order."""
    ids = sorted({int(i) for i in visible_ids})
    if len(ids) <= max_objects:
        return tuple(ids)
    picked = rng.choice(len(ids), size=max_objects, replace=False)
    return tuple(sorted(ids[int(i)] for i in picked))


class ClipSampler:
    """Draws `ClipSpec`s over a training set given the annotated-frame count of each video.

    Mixture: a sample is an image with probability `image_fraction`; otherwise a video clip
    that is referring with `referring_fraction`, hybrid with `hybrid_fraction`, else SAM2.
    Videos too short for the drawn kind fall back to a SAM2 clip (hybrid) or to another video
    (referring). Videos are drawn uniformly.
    """

    def __init__(
        self,
        video_lengths: Sequence[int],
        config: SamplingSection,
        image_fraction: float = 0.0,
    ) -> None:
        if not video_lengths:
            raise ValueError("ClipSampler needs at least one video")
        if any(n < 1 for n in video_lengths):
            bad = [i for i, n in enumerate(video_lengths) if n < 1]
            raise ValueError(f"videos {bad} have no annotated frame")
        self.lengths = [int(n) for n in video_lengths]
        self.config = config
        self.image_fraction = image_fraction
        self._referring_ok = [
            i for i, n in enumerate(self.lengths) if n >= config.referring_context_window + 1
        ]
        if config.referring_fraction > 0 and not self._referring_ok:
            raise ValueError(
                f"referring clips need videos of at least {config.referring_context_window + 1} "
                "annotated frames; none is that long"
            )

    def sample(self, rng: np.random.Generator) -> ClipSpec:
        cfg = self.config
        if _draw(rng, self.image_fraction):
            video = int(rng.integers(len(self.lengths)))
            frame = int(rng.integers(self.lengths[video]))
            return ClipSpec("image", video, (frame,), flip=_draw(rng, cfg.hflip_prob))
        draw = rng.random()
        if draw < cfg.referring_fraction:
            return self._referring(rng)
        video = int(rng.integers(len(self.lengths)))
        length = self.lengths[video]
        needed = cfg.hybrid_random_frames + cfg.hybrid_consecutive_frames
        if draw < cfg.referring_fraction + cfg.hybrid_fraction and length >= needed:
            frames, long_term = sample_hybrid_frames(
                length, cfg.hybrid_random_frames, cfg.hybrid_consecutive_frames, rng
            )
            return ClipSpec(
                "hybrid", video, frames, long_term=long_term, flip=_draw(rng, cfg.hflip_prob)
            )
        frames = sample_sam2_frames(length, cfg.clip_length, cfg.max_stride, rng)
        reverse = _draw(rng, cfg.reverse_prob)
        if reverse:
            frames = frames[::-1]
        return ClipSpec("sam2", video, frames, reversed=reverse, flip=_draw(rng, cfg.hflip_prob))

    def _referring(self, rng: np.random.Generator) -> ClipSpec:
        cfg = self.config
        video = self._referring_ok[int(rng.integers(len(self._referring_ok)))]
        tracking = cfg.referring_tracking_frames if _draw(rng, cfg.referring_tracking_prob) else 0
        picked = sample_referring_frames(
            self.lengths[video],
            cfg.referring_context_frames,
            cfg.referring_context_window,
            tracking,
            cfg.referring_reverse_prob,
            rng,
        )
        return ClipSpec(
            "referring",
            video,
            picked.frames,
            context=picked.context,
            anchor=picked.anchor,
            reversed=picked.reversed,
            object_frame=picked.anchor,  # no flip: expressions may name a location
        )
