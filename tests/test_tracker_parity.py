"""The streaming tracker and its SAM2-style facade against Meta's reference video predictor.

Both sides get the same random weights (micro config, `devtools/sam2_reference.py`), the same
non-square (48x80) JPEG folder and the same prompts, and both keep memories in bf16. Each side
reads the folder with its own loader and resizes the frames its own way to the model's square
input: the reference's `init_state` (PIL bicubic on 8-bit pixels), ours `surgray.io`'s
`VideoReader` and the tracker's `resize="bicubic_uint8"` (the `VideoPredictor` facade's
default), so a difference in frame preprocessing cannot hide. The reference runs
`add_new_*` / `propagate_in_video` as a user would; ours streams the frames through
`Tracker.step` (or the `VideoPredictor` facade). Compared on every frame and object: logits
at the video's resolution within 1e-2, binarized masks equal on >= 99.9% of pixels.

Scenarios (each needs two objects, one added at a later frame with a box, a mask prompt or a
click, and a correction click; each checks that its prompts really changed the masks):
- forward: object 1 from a mask on frame 0, tracked to frame 7, corrected there; object 2
  from a box on frame 8; both tracked to frame 15;
- reverse: object 1 from one click on frame 15, tracked back to frame 9, corrected there with
  an added click; object 2 from a box on frame 8; both tracked back to frame 0;
- facade: `VideoPredictor` on the same JPEG folder, including a correction replayed from
  the RLE-only state and a full re-propagation after adding object 2 (the reference then
  tracks object 2 before its box from that future frame's memory).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.sam2_reference import build_reference, randomize_
from surgray.io.video import VideoReader
from surgray.model.checkpoints.variants import micro_config
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.predictor import VideoPredictor
from surgray.tracking.tracker import Tracker

NUM_FRAMES = 16
SIZE = 64  # model input
HEIGHT, WIDTH = 48, 80  # frames: non-square and of another size than the model's input
SEED = 3  # weights under which both objects are present on most frames
LOGIT_TOL = 1e-2
MIN_AGREEMENT = 0.999


def draw_frames(height: int, width: int) -> list[np.ndarray]:
    """A yellow disk drifting right and a cyan box drifting left over a smooth background."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(NUM_FRAMES):
        img = np.zeros((height, width, 3), np.float32)
        img[..., 0] = 40 + 30 * np.sin(xx / 9.0)
        img[..., 1] = 60 + 20 * np.cos(yy / 7.0)
        img[..., 2] = 90
        cx, cy = 20 + 2 * t, 24 + np.sin(t / 3) * 6
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 100] = (220, 200, 60)
        img[(abs(xx - (60 - t)) < 8) & (abs(yy - 15) < 6)] = (30, 200, 230)
        frames.append(img.astype(np.uint8))
    return frames


def disk_mask(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (xx - 20) ** 2 + (yy - 24) ** 2 < 100


@pytest.fixture(scope="module")
def weights():
    torch.set_num_threads(1)
    cfg = micro_config(SIZE)
    ref = build_reference(cfg)
    state_dict = randomize_(ref, SEED)
    ref.fill_hole_area = 0  # its hole filling needs sam2's CUDA extension: skipped on CPU anyway
    ours = SAM2Model(cfg)
    ours.load_state_dict(state_dict)
    return cfg, ref, ours.eval()


def float32_memories(ref, monkeypatch) -> None:
    """On CPU the reference needs its bf16 memories handed back as float32 when no pointer
    sits beside them (research/dependencies.md, last note); the values stay bf16-rounded."""
    single, encoder = ref._run_single_frame_inference, ref._run_memory_encoder

    def single_frame(*args, **kwargs):
        out, masks = single(*args, **kwargs)
        if out["maskmem_features"] is not None:
            out["maskmem_features"] = out["maskmem_features"].float()
        return out, masks

    def memory_encoder(*args, **kwargs):
        features, pos = encoder(*args, **kwargs)
        return features.float(), pos

    monkeypatch.setattr(ref, "_run_single_frame_inference", single_frame)
    monkeypatch.setattr(ref, "_run_memory_encoder", memory_encoder)


def write_jpegs(folder, frames: list[np.ndarray]) -> None:
    folder.mkdir(exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=95)


def reference_state(ref, folder, frames: list[np.ndarray]):
    """The reference's state over a JPEG folder of `frames`, read by its own loader, and the
    frames as surgray's own reader decodes the same folder."""
    write_jpegs(folder, frames)
    with torch.inference_mode():
        state = ref.init_state(str(folder))
    with VideoReader(str(folder)) as reader:
        decoded = [frame.image for frame in reader]
    assert decoded[0].shape == (*frames[0].shape[:2], 3)
    return state, decoded


def video_tracker(model: SAM2Model) -> Tracker:
    """Our tracker, resizing frames as the reference's video predictor does."""
    return Tracker(
        model,
        {"name": "recent"},
        keep_logits=True,
        postprocess={"fill_hole_area": 0},
        resize="bicubic_uint8",
    )


class Comparison:
    """Collects per-frame, per-object comparisons of reference and surgray logits."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, float, float, int]] = []

    def add(self, tag, frame_idx, ref_ids, ref_logits, ours_by_id) -> None:
        for j, obj_id in enumerate(ref_ids):
            a = ref_logits[j, 0].float()
            b = ours_by_id[obj_id]
            diff = float((a - b).abs().max())
            agree = float(((a > 0) == (b > 0)).float().mean())
            self.rows.append((tag, frame_idx, obj_id, diff, agree, int((a > 0).sum())))

    def check(self, expected_rows: int) -> None:
        assert len(self.rows) == expected_rows, [r[:3] for r in self.rows]
        worst = max(self.rows, key=lambda r: r[3])
        assert worst[3] <= LOGIT_TOL, f"largest logit difference {worst}"
        least = min(self.rows, key=lambda r: r[4])
        assert least[4] >= MIN_AGREEMENT, f"lowest mask agreement {least}"
        present = [r for r in self.rows if r[5] > 0]
        assert len(present) >= 0.75 * len(self.rows), "too few frames with a mask to compare"

    def area(self, tag: str, frame_idx: int, obj_id: int) -> int:
        return next(r[5] for r in self.rows if r[:3] == (tag, frame_idx, obj_id))


def logits_by_id(result) -> dict[int, torch.Tensor]:
    return {o.obj_id: o.logits for o in result.objects}


def run_reference(gen) -> list:
    with torch.inference_mode():
        return list(gen)


def test_forward_mask_correction_and_late_box(weights, tmp_path):
    _, ref, ours = weights
    height, width = HEIGHT, WIDTH
    rs, frames = reference_state(ref, tmp_path / "frames", draw_frames(height, width))
    tracker = video_tracker(ours)
    state = tracker.start("fwd", (height, width), num_frames=NUM_FRAMES)
    cmp = Comparison()

    with torch.inference_mode():
        ref.add_new_mask(rs, 0, 1, torch.from_numpy(disk_mask(height, width)))
    assert tracker.add_mask(state, 1, 0, disk_mask(height, width)) is None  # waits for frame 0
    ref_frames = run_reference(
        ref.propagate_in_video(rs, start_frame_idx=0, max_frame_num_to_track=7)
    )
    for (t, ids, logits), frame in zip(ref_frames, frames[:8], strict=True):
        cmp.add("track", t, ids, logits, logits_by_id(tracker.step(state, frame)))

    click = dict(points=[[35, 30]], labels=[0])
    with torch.inference_mode():
        t, ids, logits = ref.add_new_points_or_box(rs, 7, 1, **click)
    corrected = tracker.add_points(state, 1, 7, click["points"], click["labels"])
    cmp.add("correct", t, ids, logits, logits_by_id(corrected))

    with torch.inference_mode():
        ref.add_new_points_or_box(rs, 8, 2, box=[45, 5, 75, 28])
    assert tracker.add_box(state, 2, 8, (45, 5, 75, 28)) is None
    ref_frames = run_reference(ref.propagate_in_video(rs, start_frame_idx=8))
    for (t, ids, logits), frame in zip(ref_frames, frames[8:], strict=True):
        assert ids == [1, 2]
        cmp.add("track", t, ids, logits, logits_by_id(tracker.step(state, frame)))

    cmp.check(expected_rows=8 + 1 + 2 * 8)
    assert cmp.area("correct", 7, 1) != cmp.area("track", 7, 1), "the click changed nothing"
    assert cmp.area("track", 8, 2) != cmp.area("track", 8, 1), "object 2 copies object 1"


def test_reverse_click_correction_and_late_box(weights, tmp_path):
    _, ref, ours = weights
    height, width = HEIGHT, WIDTH
    rs, frames = reference_state(ref, tmp_path / "frames", draw_frames(height, width))
    tracker = video_tracker(ours)
    state = tracker.start("rev", (height, width), num_frames=NUM_FRAMES)
    cmp = Comparison()

    with torch.inference_mode():
        ref.add_new_points_or_box(rs, 15, 1, points=[[58, 14]], labels=[1])
    tracker.add_points(state, 1, 15, [[58, 14]], [1])
    ref_frames = run_reference(
        ref.propagate_in_video(rs, start_frame_idx=15, max_frame_num_to_track=6, reverse=True)
    )
    ours_frames = tracker.propagate(state, frames[15:8:-1], reverse=True, start_frame_idx=15)
    for (t, ids, logits), result in zip(ref_frames, ours_frames, strict=True):
        assert result.frame_idx == t
        cmp.add("track", t, ids, logits, logits_by_id(result))

    with torch.inference_mode():
        t, ids, logits = ref.add_new_points_or_box(
            rs, 9, 1, points=[[20, 40]], labels=[1], clear_old_points=False
        )
    corrected = tracker.add_points(state, 1, 9, [[20, 40]], [1], clear_old_points=False)
    cmp.add("correct", t, ids, logits, logits_by_id(corrected))

    with torch.inference_mode():
        ref.add_new_points_or_box(rs, 8, 2, box=[10, 14, 32, 36])
    tracker.add_box(state, 2, 8, (10, 14, 32, 36))
    ref_frames = run_reference(ref.propagate_in_video(rs, start_frame_idx=8, reverse=True))
    for (t, ids, logits), frame in zip(ref_frames, frames[8::-1], strict=True):
        result = tracker.step(state, frame)
        assert result.frame_idx == t
        cmp.add("track", t, ids, logits, logits_by_id(result))

    cmp.check(expected_rows=7 + 1 + 2 * 9)
    assert cmp.area("correct", 9, 1) != cmp.area("track", 9, 1), "the click changed nothing"
    assert cmp.area("track", 8, 2) != cmp.area("track", 8, 1), "object 2 copies object 1"


def test_facade_matches_reference_predictor(weights, tmp_path, monkeypatch):
    """Non-square frames: both predictors read the same JPEG folder with their own loaders
    (the facade's default resize is the reference video predictor's)."""
    _, ref, ours = weights
    folder = tmp_path / "frames"
    write_jpegs(folder, draw_frames(HEIGHT, WIDTH))
    with torch.inference_mode():
        rs = ref.init_state(str(folder))
    float32_memories(ref, monkeypatch)
    predictor = VideoPredictor(ours, postprocess={"fill_hole_area": 0})
    ps = predictor.init_state(str(folder))
    assert (ps.num_frames, ps.video_height, ps.video_width) == (NUM_FRAMES, HEIGHT, WIDTH)
    cmp = Comparison()

    def prompt(tag, obj_id, call):
        """The same call on both predictors; logits of the prompted object are compared, the
        others (ours hold them as RLE) must agree as masks."""
        with torch.inference_mode():
            t, ids, logits = call(ref, rs)
        t2, ids2, logits2 = call(predictor, ps)
        assert (t, ids) == (t2, ids2)
        k = ids.index(obj_id)
        cmp.add(tag, t, [obj_id], logits[k : k + 1], {obj_id: logits2[k, 0]})
        assert torch.equal(logits > 0, logits2 > 0)

    def propagate(tag, **kwargs):
        ref_frames = run_reference(ref.propagate_in_video(rs, **kwargs))
        ours_frames = list(predictor.propagate_in_video(ps, **kwargs))
        assert [f[0] for f in ref_frames] == [f[0] for f in ours_frames]
        for (t, ids, logits), (_, ids2, logits2) in zip(ref_frames, ours_frames):
            assert ids == ids2
            cmp.add(tag, t, ids, logits, {i: logits2[k, 0] for k, i in enumerate(ids2)})

    prompt("click", 1, lambda p, s: p.add_new_points_or_box(s, 0, 1, points=[[20, 24]], labels=[1]))
    propagate("pass1")
    # Frame 5 has left the tracker's memory: the facade replays frames 0..5 first.
    prompt(
        "correct", 1, lambda p, s: p.add_new_points_or_box(s, 5, 1, points=[[30, 30]], labels=[0])
    )
    propagate("pass2", start_frame_idx=6)
    prompt("box", 2, lambda p, s: p.add_new_points_or_box(s, 10, 2, box=[40, 5, 63, 30]))
    propagate("pass3")  # from frame 0 on both sides; object 2 rides frame 10's memory backwards

    cmp.check(expected_rows=1 + 16 + 1 + 10 + 1 + 2 * 16)
    assert cmp.area("correct", 5, 1) != cmp.area("pass1", 5, 1), "the click changed nothing"
    assert cmp.area("pass3", 3, 2) > 0, "object 2 is not tracked before its box"
    assert set(ps.masks) == set(range(NUM_FRAMES)) and ps.rle_bytes() > 0


def test_bicubic_uint8_is_the_reference_video_loaders_input(tmp_path):
    """The facade's resize gives the reference loader's model input on a non-square JPEG;
    the image predictor's bilinear resize does not (so the parity above can tell them apart)."""
    from sam2.utils.misc import _load_img_as_tensor

    from surgray.model.sam2.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from surgray.tracking.inputs import model_input

    write_jpegs(tmp_path, draw_frames(HEIGHT, WIDTH)[:1])
    path = tmp_path / "00000.jpg"
    pixels, height, width = _load_img_as_tensor(str(path), SIZE)
    assert (height, width) == (HEIGHT, WIDTH)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    expected = (pixels.float() - mean) / std
    with VideoReader(str(tmp_path)) as reader:
        frame = next(iter(reader)).image
    cfg = micro_config(SIZE)
    bicubic = model_input(frame, cfg, torch.device("cpu"), "bicubic_uint8")[0]
    bilinear = model_input(frame, cfg, torch.device("cpu"), "bilinear_antialias")[0]
    assert (bicubic - expected).abs().max() < 1e-5
    assert (bilinear - expected).abs().max() > 0.05  # over 3 grey levels somewhere
