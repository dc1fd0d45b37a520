"""Synthetic surgical clip generator: events really happen in the ground truth, determinism,
speed, writers and the `surgray synth` CLI."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from surgray.data.categories import ACTIONS, INSTRUMENT_CATEGORIES, TISSUE_CATEGORIES
from surgray.data.synthetic import SyntheticClipConfig, generate_clip
from surgray.data.synthetic_writers import (
    make_synthetic_dataset,
    sav_annotation,
    write_clip_video,
)

SMALL = dict(num_frames=24, height=96, width=128)
NO_EVENTS = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


@pytest.fixture(scope="module")
def clip():
    """Full-size clip with every event: 64 frames, 256x256, 3 instruments, 2 tissues."""
    return generate_clip(SyntheticClipConfig(num_instruments=3, num_tissues=2), seed=7)


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)


def test_shapes_objects_and_pixel_counts(clip):
    T = 64
    assert clip.frames.shape == (T, 256, 256, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (T, 256, 256)
    kinds = [o.kind for o in clip.objects]
    assert kinds == ["instrument"] * 3 + ["tissue"] * 2
    assert [o.obj_id for o in clip.objects] == [1, 2, 3, 11, 12]
    assert all(o.category in INSTRUMENT_CATEGORIES for o in clip.objects[:3])
    assert all(o.category in TISSUE_CATEGORIES for o in clip.objects[3:])
    # Mask ids are exactly the declared objects (plus background).
    assert set(np.unique(clip.masks).tolist()) <= {0, 1, 2, 3, 11, 12}
    # visible_pixels agrees with a recount of the masks; no object ever exceeds its amodal area.
    for t in (0, 31, 63):
        for n, info in enumerate(clip.objects):
            assert clip.visible_pixels[t, n] == np.count_nonzero(clip.masks[t] == info.obj_id)
    assert (clip.visible_pixels <= clip.full_pixels).all()
    # Every instrument carries a Ref-EndoVis action in every frame; tissue has action 0.
    assert set(np.unique(clip.actions[:, :3]).tolist()) <= set(ACTIONS)
    assert (clip.actions[:, 3:] == 0).all()


def test_instrument_leaves_for_at_least_10_frames_and_returns(clip):
    (event,) = clip.events_of("absence")
    (obj_id,) = event.obj_ids
    assert event.end - event.start >= 10
    for t in event.frames:
        assert not (clip.masks[t] == obj_id).any(), f"object {obj_id} visible at frame {t}"
    assert (clip.masks[event.start - 1] == obj_id).any()
    assert (clip.masks[event.end] == obj_id).any()
    # Absent frames are left out of the per-frame location too.
    assert (clip.locations[event.start : event.end, clip.column(obj_id)] == 0).all()


def test_one_instrument_passes_in_front_of_another(clip):
    (event,) = clip.events_of("occlusion")
    behind, front = event.obj_ids
    n = clip.column(behind)
    hidden = (
        clip.full_pixels[event.start : event.end, n]
        - clip.visible_pixels[event.start : event.end, n]
    )
    assert hidden.max() >= 50
    worst = event.start + int(hidden.argmax())
    # Where the hidden one is cut, the front one's mask is right against it.
    front_mask = (clip.masks[worst] == front).astype(np.uint8)
    touching = cv2.dilate(front_mask, np.ones((3, 3), np.uint8)).astype(bool) & (
        clip.masks[worst] == behind
    )
    assert touching.sum() >= 10
    assert (clip.masks[worst] == behind).any(), "the occluded instrument must stay partly visible"


def test_smoke_frames_are_flagged_and_hazier(clip):
    (event,) = clip.events_of("smoke")
    flagged = np.nonzero(clip.smoke_level > 0)[0]
    assert flagged.tolist() == list(event.frames)
    peak = clip.smoke_level >= 0.9 * clip.smoke_level.max()
    clear = (clip.smoke_level == 0) & ~clip.motion_blurred
    contrast = np.array([_grey(f).std() for f in clip.frames])
    assert contrast[peak].mean() < 0.75 * contrast[clear].mean()
    # Haze is grey: colour saturation drops too.
    saturation = np.array([cv2.cvtColor(f, cv2.COLOR_RGB2HSV)[..., 1].mean() for f in clip.frames])
    assert saturation[peak].mean() < 0.75 * saturation[clear].mean()


def test_motion_blur_frames_are_blurred(clip):
    (event,) = clip.events_of("motion_blur")
    assert np.nonzero(clip.motion_blurred)[0].tolist() == list(event.frames)
    sharpness = np.array([cv2.Laplacian(_grey(f), cv2.CV_32F).var() for f in clip.frames])
    neighbours = [
        t
        for t in (event.start - 2, event.start - 1, event.end, event.end + 1)
        if 0 <= t < 64 and clip.smoke_level[t] == 0
    ]
    assert neighbours
    assert sharpness[list(event.frames)].mean() < 0.6 * sharpness[neighbours].mean()


def test_expressions_follow_the_templates(clip):
    assert {e.obj_id for e in clip.expressions} == {o.obj_id for o in clip.objects}
    for expression in clip.expressions:
        info = clip.objects[clip.column(expression.obj_id)]
        t = expression.first_frame
        assert clip.visible_pixels[t, clip.column(info.obj_id)] > 0
        if info.kind == "tissue":
            assert expression.text == info.category
            continue
        verb = "are" if info.category.endswith("s") else "is"
        base = f"{info.category} {verb} {ACTIONS[int(clip.actions[t, clip.column(info.obj_id)])]}"
        if clip.unique(info.obj_id):
            assert expression.text == base
        else:
            assert re.fullmatch(
                re.escape(base) + r" on the (bottom|top)? ?(left|center|right)", expression.text
            )


def test_duplicate_categories_get_a_location():
    cfg = SyntheticClipConfig(
        **SMALL,
        **NO_EVENTS,
        num_instruments=2,
        num_tissues=0,
        instrument_categories=("Prograsp_Forceps", "prograsp forceps"),
    )
    clip = generate_clip(cfg, seed=3)
    assert [o.category for o in clip.objects] == ["prograsp forceps", "prograsp forceps"]
    assert all(
        " on the " in e.text and e.text.startswith("prograsp forceps are ")
        for e in clip.expressions
    )


def test_same_seed_same_bytes_other_seed_differs():
    cfg = SyntheticClipConfig(num_frames=48, height=96, width=128, num_instruments=2)
    a, b, c = generate_clip(cfg, seed=11), generate_clip(cfg, seed=11), generate_clip(cfg, seed=12)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    assert a.events == b.events and a.expressions == b.expressions
    assert a.frames.tobytes() != c.frames.tobytes()


def test_dataset_files_are_byte_identical_for_one_seed(tmp_path):
    cfg = SyntheticClipConfig(
        num_frames=32, height=64, width=80, absence_frames=10, occlusion=False, smoke_frames=4
    )
    for name in ("a", "b"):
        make_synthetic_dataset(tmp_path / name, 3, seed=5, config=cfg)
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert files_a == files_b and len(files_a) > 3 * 32 * 2
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_64_frame_clip_is_fast():
    """CPU time, not wall time: the test machines are shared, but the work is what we bound
    (about 0.35 s of CPU on the 2-core dev machine)."""
    cfg = SyntheticClipConfig(num_instruments=2, num_tissues=1)
    generate_clip(cfg, seed=0)  # warm caches
    start = time.process_time()
    generate_clip(cfg, seed=1)
    elapsed = time.process_time() - start
    assert elapsed < 2.0, f"64 frames at 256x256 took {elapsed:.2f}s of CPU"


@pytest.mark.parametrize(
    "update, message",
    [
        (dict(num_instruments=1, occlusion=True), "occlusion needs num_instruments >= 2"),
        (dict(num_frames=20), "num_frames=20 is too short"),
        (
            dict(instrument_categories=("hook", "bipolar forceps")),
            "unknown surgical category 'hook'",
        ),
        (dict(instrument_categories=("bipolar forceps",)), "lists 1 names but num_instruments=2"),
    ],
)
def test_bad_config_is_named(update, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_clip(SyntheticClipConfig(**{"num_instruments": 2, **update}), seed=0)


def test_mp4_writer_round_trip(tmp_path):
    import av

    clip = generate_clip(SyntheticClipConfig(**SMALL, **NO_EVENTS), seed=2)
    written = write_clip_video(clip, str(tmp_path / "clip.mp4"))
    assert written.frame_count == 24
    with av.open(str(tmp_path / "clip.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == clip.frames.shape
    assert np.abs(decoded.astype(int) - clip.frames.astype(int)).mean() < 4.0


def test_sav_annotation_holds_every_fourth_frame():
    from pycocotools import mask as coco_mask

    clip = generate_clip(SyntheticClipConfig(**SMALL, **NO_EVENTS), seed=4)
    data = sav_annotation(clip, "v", "train")
    assert len(data["masklet"]) == 6  # frames 0, 4, ..., 20 of 24
    assert data["masklet_id"] == [o.obj_id for o in clip.objects]
    with warnings.catch_warnings():  # pycocotools trips numpy 2's copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = coco_mask.decode(
            [{"size": r["size"], "counts": r["counts"].encode()} for r in data["masklet"][5]]
        )
    for j, obj_id in enumerate(data["masklet_id"]):
        assert np.array_equal(decoded[..., j].astype(bool), clip.masks[20] == obj_id)


def _cli(argv: list[str]) -> int:
    """`surgray synth ARGV` as the command runs it (user errors: one line, exit 2)."""
    from surgray.cli import main

    return main(["synth", *argv])


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        _cli(
            [
                str(out),
                "-n",
                "2",
                "--frames",
                "24",
                "--height",
                "64",
                "--width",
                "64",
                "--no-leave-and-return",
                "--no-occlusion",
            ]
        )
        == 0
    )
    assert "wrote 2 clips (1 train, 1 valid)" in capsys.readouterr().out
    manifest = json.loads((out / "synthetic_manifest.json").read_text())
    assert [v["split"] for v in manifest["videos"]].count("valid") == 1
    assert len(list((out / "train" / "JPEGImages").iterdir())) == 1
    assert (out / "valid" / "meta_expressions.json").is_file()


def test_cli_reports_bad_settings(tmp_path, capsys):
    assert _cli([str(tmp_path / "x"), "--frames", "12", "--no-vary"]) == 2
    assert "num_frames=12 is too short" in capsys.readouterr().err


def test_every_category_is_drawable_and_distinct():
    """Each instrument category draws a differently shaped tip (mask pixel counts differ)."""
    from surgray.data.synthetic_scene import INSTRUMENT_STYLES, fill_mask, instrument_shapes

    areas = {}
    for category in INSTRUMENT_STYLES:
        mask = np.zeros((128, 128), np.uint8)
        fill_mask(
            mask,
            instrument_shapes(
                category, np.array([-400.0, 64.0]), np.array([60.0, 64.0]), 1.0, 10.0
            ),
        )
        areas[category] = int(np.count_nonzero(mask[:, 61:]))  # the tip only
    assert len(set(areas.values())) == len(areas), areas
    assert set(INSTRUMENT_STYLES) == set(INSTRUMENT_CATEGORIES) - {"instrument"}


def test_events_can_be_switched_off():
    clip = generate_clip(SyntheticClipConfig(**SMALL, **NO_EVENTS, camera_motion=False), seed=9)
    assert clip.events == ()
    assert not clip.motion_blurred.any() and not clip.smoke_level.any()
    assert (clip.visible_pixels[:, : clip.column(1) + 1] > 0).all()


def test_writer_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'coco'"):
        make_synthetic_dataset(Path(tmp_path), 1, layout="coco")  # type: ignore[arg-type]
