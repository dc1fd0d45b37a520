"""Dataset readers (DAVIS/SA-V folders, SA-V JSON, Ref-EndoVis, raw EndoVis17/18), the category
normaliser and expression templates, on fixtures the tests write themselves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgray.data.categories import canonical_category, location_of_point, try_canonical_category
from surgray.data.davis import DavisDataset
from surgray.data.endovis_raw import EndoVis17Raw, EndoVis18Raw
from surgray.data.expressions import instrument_expression, object_expression
from surgray.data.files import DatasetError
from surgray.data.ref_endovis import RefEndoVisDataset
from surgray.data.sample import ObjectMeta
from surgray.data.sasv import SavJsonDataset, open_sasv
from surgray.data.synthetic import SyntheticClipConfig, generate_clip
from surgray.data.synthetic_writers import make_synthetic_dataset

CFG = SyntheticClipConfig(
    num_frames=32,
    height=64,
    width=80,
    num_instruments=2,
    num_tissues=1,
    absence_frames=10,
    occlusion=False,
    smoke_frames=4,
)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, compress_level=1)


def _clip_of(dataset, video_id: str):
    seed = next(v.seed for v in dataset.videos if v.video_id == video_id)
    return generate_clip(CFG, seed=seed)


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    dataset = make_synthetic_dataset(root, 3, seed=21, config=CFG, vary=False)
    return root, dataset


# ---------------------------------------------------------------------------------------------
# Categories and expressions


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("Bipolar_Forceps", "bipolar forceps"),
        ("Maryland_Bipolar_Forceps_labels", "bipolar forceps"),
        ("Left_Prograsp_Forceps_labels", "prograsp forceps"),
        ("Prograsp Forceps", "prograsp forceps"),
        ("Large Needle Driver", "large needle driver"),
        ("Large_Needle_Driver_Left_labels", "large needle driver"),
        ("Right_Large_Needle_Driver_labels", "large needle driver"),
        ("Monopolar_Curved_Scissors", "monopolar curved scissors"),
        ("Other_labels", "ultrasound probe"),
        ("suction", "suction instrument"),
        ("suction-instrument", "suction instrument"),
        ("kidney-parenchyma", "kidney parenchyma"),
        ("covered-kidney", "covered kidney"),
        ("small-intestine", "small intestine"),
        ("Grasping_Retractor", "grasping retractor"),
        ("clip applier", "clip applier"),
    ],
)
def test_canonical_category(spelling, canonical):
    assert canonical_category(spelling) == canonical


def test_unknown_category_is_named():
    assert try_canonical_category("harmonic scalpel") is None
    with pytest.raises(ValueError, match="unknown surgical category 'harmonic scalpel'"):
        canonical_category("harmonic scalpel")


def test_locations_and_templates():
    # 3x3 grid of a 300x300 image, rows counted from the bottom.
    assert location_of_point(10, 290, 300, 300) == 1  # bottom left
    assert location_of_point(150, 150, 300, 300) == 5  # center
    assert location_of_point(290, 150, 300, 300) == 6  # right
    assert location_of_point(290, 10, 300, 300) == 9  # top right
    assert instrument_expression("bipolar forceps", 6) == "bipolar forceps are grasping tissue"
    assert instrument_expression("vessel sealer", 12) == "vessel sealer is transecting vessel"
    assert (
        instrument_expression("prograsp forceps", 7, 7, unique=False)
        == "prograsp forceps are retracting tissue on the top left"
    )
    assert object_expression("kidney parenchyma", "tissue", 0) == "kidney parenchyma"
    with pytest.raises(ValueError, match="action id 14"):
        instrument_expression("clip applier", 14)


# ---------------------------------------------------------------------------------------------
# Ref-EndoVis and DAVIS layouts from the synthetic writer


def test_ref_endovis_valid_split_matches_the_generator(ref_root):
    root, dataset = ref_root
    ds = RefEndoVisDataset(str(root), "valid")
    assert len(ds) == 1 and ds.video_ids == [v.video_id for v in dataset.split("valid")]
    sample = ds[0]
    clip = _clip_of(dataset, sample.video_id)
    assert sample.num_frames == 32 and sample.frame_names[:2] == ("00000", "00001")
    assert [(o.obj_id, o.category, o.kind) for o in sample.objects] == [
        (o.obj_id, o.category, o.kind) for o in clip.objects
    ]
    for t in (0, 17, 31):
        frame = sample.load(t)
        assert np.array_equal(frame.image, clip.frames[t])  # PNG frames are lossless
        assert np.array_equal(frame.mask, clip.masks[t])
    assert [(e.text, e.obj_id, e.first_frame) for e in sample.expressions] == [
        (e.text, e.obj_id, e.first_frame) for e in clip.expressions
    ]
    meta = sample.load_frame_meta()
    first = meta["00000"][1]
    assert (first.action, first.location) == (int(clip.actions[0, 0]), int(clip.locations[0, 0]))
    sample.validate()
    assert ds[sample.video_id].video_id == sample.video_id
    with pytest.raises(KeyError, match="no video 'nope'"):
        ds["nope"]


def test_ref_endovis_train_split_builds_expressions_from_meta(ref_root, tmp_path):
    root, dataset = ref_root
    copy = tmp_path / "ref"
    shutil.copytree(root, copy)
    (copy / "train" / "meta_expressions.json").unlink()
    ds = RefEndoVisDataset(str(copy), "train")
    assert len(ds) == 2
    for sample in ds:
        clip = _clip_of(dataset, sample.video_id)
        made = [(e.text, e.obj_id, e.first_frame) for e in sample.expressions]
        assert made == [(e.text, e.obj_id, e.first_frame) for e in clip.expressions]


def test_ref_endovis_needs_meta(ref_root, tmp_path):
    root, _ = ref_root
    copy = tmp_path / "ref"
    shutil.copytree(root, copy)
    video = sorted((copy / "valid" / "Meta").iterdir())[0]
    video.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{video}: Meta file not found")):
        RefEndoVisDataset(str(copy), "valid")[0]


def test_davis_layout_with_jpeg_frames(tmp_path):
    dataset = make_synthetic_dataset(tmp_path, 2, seed=3, layout="davis", config=CFG, vary=False)
    ds = DavisDataset(str(tmp_path), "train")
    sample = ds[0]
    clip = _clip_of(dataset, sample.video_id)
    assert sample.frames.describe(0).endswith("00000.jpg")
    for t in (0, 31):
        frame = sample.load(t)
        assert np.array_equal(frame.mask, clip.masks[t])
        assert np.abs(frame.image.astype(int) - clip.frames[t].astype(int)).mean() < 3.0
    assert [o.category for o in sample.objects] == [o.category for o in clip.objects]
    # Without Meta the objects are those of the first annotated frame, categories unknown.
    shutil.rmtree(tmp_path / "train" / "Meta")
    bare = DavisDataset(str(tmp_path), "train")[0]
    first_ids = sorted(set(np.unique(clip.masks[0]).tolist()) - {0})
    assert bare.objects == tuple(ObjectMeta(i, None) for i in first_ids)


def test_sav_style_per_object_folders(tmp_path):
    clip = generate_clip(
        CFG.model_copy(update={"num_frames": 12, "leave_and_return": False, "smoke": False}), seed=8
    )
    video = "sav_000001"
    for t in range(12):
        _png(tmp_path / "JPEGImages_24fps" / video / f"{t:05d}.png", clip.frames[t])
        if t % 4 == 0:
            for j, info in enumerate(clip.objects):  # SA-V numbers object folders from 000
                binary = (clip.masks[t] == info.obj_id).astype(np.uint8) * 255
                _png(tmp_path / "Annotations_6fps" / video / f"{j:03d}" / f"{t:05d}.png", binary)
    ds = DavisDataset(
        str(tmp_path),
        images_dir="JPEGImages_24fps",
        annotations_dir="Annotations_6fps",
        allow_sparse_annotations=True,
    )
    sample = ds[0]
    assert sample.annotated_frames == [0, 4, 8]
    assert [o.obj_id for o in sample.objects] == [j + 1 for j in range(len(clip.objects))]
    lookup = np.zeros(256, np.uint8)
    for j, info in enumerate(clip.objects):
        lookup[info.obj_id] = j + 1
    assert np.array_equal(sample.load(8).mask, lookup[clip.masks[8]])
    assert sample.load(5).mask is None
    with pytest.raises(DatasetError, match="frame 5 .* has no annotation"):
        sample.load_mask(5)
    with pytest.raises(
        DatasetError, match=r"00001\.png: missing annotation for frame .*00001\.png \(9 of 12"
    ):
        DavisDataset(
            str(tmp_path), images_dir="JPEGImages_24fps", annotations_dir="Annotations_6fps"
        )[0]


# ---------------------------------------------------------------------------------------------
# SA-V JSON / SA-SV


def test_sav_json_masklets_with_mp4_frames(tmp_path):
    dataset = make_synthetic_dataset(
        tmp_path, 1, seed=4, layout="sav", config=CFG, vary=False, valid_fraction=0.0
    )
    ds = open_sasv(str(tmp_path), "train")
    assert isinstance(ds, SavJsonDataset)
    sample = ds[0]
    clip = _clip_of(dataset, sample.video_id)
    assert sample.num_frames == 32 and sample.annotated_frames == list(range(0, 32, 4))
    assert [o.category for o in sample.objects] == [o.category for o in clip.objects]
    for t in (0, 4, 28):
        assert np.array_equal(sample.load_mask(t), clip.masks[t])
    frame = sample.load(12)
    assert np.abs(frame.image.astype(int) - clip.frames[12].astype(int)).mean() < 4.0
    assert sample.load(13).mask is None
    sample.validate()
    streamed = list(sample.iter_frames())  # one decode pass
    assert [f.index for f in streamed] == list(range(32))
    assert [f.mask is not None for f in streamed] == [t % 4 == 0 for t in range(32)]
    assert np.array_equal(streamed[12].image, frame.image)
    assert np.array_equal(streamed[8].mask, clip.masks[8])


def test_sav_json_zero_based_ids_and_frames_folder(tmp_path):
    from surgray.io.masks import encode_rle

    for t in range(8):
        _png(
            tmp_path / "JPEGImages_24fps" / "v1" / f"{t:05d}.jpg",
            np.full((16, 20, 3), t * 10, np.uint8),
        )
    first = np.zeros((2, 16, 20), bool)
    first[0, 2:5, 3:9] = True
    second = np.zeros((2, 16, 20), bool)
    second[0, 0:2, 0:2] = True
    second[1, 10:16, 15:20] = True
    data = {
        "video_id": "v1",
        "masklet": [encode_rle(first), encode_rle(second)],
        "masklet_id": [0, 1],
    }
    (tmp_path / "v1_manual.json").write_text(json.dumps(data))
    sample = SavJsonDataset(str(tmp_path), frames_dir="JPEGImages_24fps")[0]
    assert [o.obj_id for o in sample.objects] == [1, 2]  # shifted off background
    assert sample.annotated_frames == [0, 4]
    mask = sample.load(4).mask
    assert mask.shape == (16, 20)
    assert int((mask == 1).sum()) == 4 and int((mask == 2).sum()) == 30 and mask[12, 17] == 2
    assert int((sample.load_mask(0) == 1).sum()) == 18


def test_open_sasv_picks_the_layout_or_says_why_not(ref_root, tmp_path):
    root, _ = ref_root
    assert isinstance(open_sasv(str(root), "train"), DavisDataset)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither JPEGImages/ .* nor \\*_manual.json"):
        open_sasv(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="test: split folder not found"):
        open_sasv(str(tmp_path), "test")


# ---------------------------------------------------------------------------------------------
# Raw EndoVis17


def _make_ev17(root: Path, frames: int = 3, size: tuple[int, int] = (1080, 1920)) -> Path:
    """instrument_1_4_training/instrument_dataset_1 with two instruments, marker pixels at the
    corners of the 1280x1024 crop."""
    seq = root / "instrument_1_4_training" / "instrument_dataset_1"
    for t in range(frames):
        image = np.zeros((*size, 3), np.uint8)
        image[28, 320] = (10, 20, 30)  # first pixel inside the crop
        image[1051, 1599] = (40, 50, 60)  # last pixel inside the crop
        image[27, 320] = (255, 0, 0)  # just above it
        _png(seq / "left_frames" / f"frame{t:03d}.png", image)
        prograsp = np.zeros(size, np.uint8)
        prograsp[100:200, 400:500] = 10  # shaft label value
        prograsp[0:20, 0:100] = 20  # outside the crop
        _png(seq / "ground_truth" / "Left_Prograsp_Forceps_labels" / f"frame{t:03d}.png", prograsp)
        bipolar = np.zeros(size, np.uint8)
        bipolar[500:540, 1000:1100] = 30  # clasper label value
        _png(
            seq / "ground_truth" / "Maryland_Bipolar_Forceps_labels" / f"frame{t:03d}.png", bipolar
        )
    return seq


def test_endovis17_raw_crop_and_instruments(tmp_path):
    _make_ev17(tmp_path)
    ds = EndoVis17Raw(str(tmp_path))
    assert ds.video_ids == ["seq_1"]
    sample = ds[0]
    assert sample.frame_names == ("frame000", "frame001", "frame002")
    assert sample.objects == (
        ObjectMeta(1, "prograsp forceps", "instrument", "Left_Prograsp_Forceps_labels"),
        ObjectMeta(2, "bipolar forceps", "instrument", "Maryland_Bipolar_Forceps_labels"),
    )
    frame = sample.load(1)
    assert frame.image.shape == (1024, 1280, 3)
    assert frame.image[0, 0].tolist() == [10, 20, 30]
    assert frame.image[1023, 1279].tolist() == [40, 50, 60]
    assert int((frame.image[..., 0] == 255).sum()) == 0
    # rows 100:200, cols 400:500 -> 72:172, 80:180; rows 500:540, cols 1000:1100 -> 472:512, 680:780
    assert int((frame.mask == 1).sum()) == 10000 and (frame.mask[72:172, 80:180] == 1).all()
    assert int((frame.mask == 2).sum()) == 4000 and (frame.mask[472:512, 680:780] == 2).all()
    sample.validate()
    uncropped = EndoVis17Raw(str(tmp_path), crop=False)[0].load(0)
    assert uncropped.image.shape == (1080, 1920, 3)
    assert int((uncropped.mask == 1).sum()) == 12000  # the strip outside the crop is back


def test_endovis17_raw_bad_input(tmp_path):
    seq = _make_ev17(tmp_path / "a", frames=2)
    _png(
        seq / "left_frames" / "frame001.png", np.zeros((1024, 1280, 3), np.uint8)
    )  # already cropped
    sample = EndoVis17Raw(str(tmp_path / "a"))[0]
    with pytest.raises(
        DatasetError, match=r"frame001\.png: image is 1280x1024, too small for the 1280x1024 crop"
    ):
        sample.load(1)

    seq = _make_ev17(tmp_path / "b", frames=2)
    missing = seq / "ground_truth" / "Maryland_Bipolar_Forceps_labels" / "frame001.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{missing}: missing ground truth for frame")):
        EndoVis17Raw(str(tmp_path / "b"))[0]

    seq = _make_ev17(tmp_path / "c", frames=1, size=(1080, 1920))
    shutil.rmtree(seq / "ground_truth")
    with pytest.raises(DatasetError, match="ground_truth folder not found"):
        EndoVis17Raw(str(tmp_path / "c"))[0]
    assert EndoVis17Raw(str(tmp_path / "c"), allow_sparse_annotations=True)[0].masks is None

    seq = _make_ev17(tmp_path / "d", frames=1)
    (seq / "ground_truth" / "Left_Prograsp_Forceps_labels").rename(
        seq / "ground_truth" / "Mystery_Tool_labels"
    )
    with pytest.raises(DatasetError, match="Mystery_Tool_labels: cannot tell the instrument type"):
        EndoVis17Raw(str(tmp_path / "d"))[0]

    (tmp_path / "e").mkdir()
    with pytest.raises(
        DatasetError, match=r"no instrument_dataset_<k> folders found \(empty dataset\)"
    ):
        EndoVis17Raw(str(tmp_path / "e"))
    with pytest.raises(DatasetError, match="dataset root not found"):
        EndoVis17Raw(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Raw EndoVis18


def _make_ev18(root: Path, labels_json: list | None = None) -> Path:
    seq = root / "miccai_challenge_2018_release_1" / "seq_3"
    for t in range(2):
        _png(seq / "left_frames" / f"frame{t:03d}.png", np.full((40, 50, 3), 90 + t, np.uint8))
        label = np.zeros((40, 50, 3), np.uint8)
        label[0:10, 0:10] = (0, 255, 0)  # instrument shaft, 100 px
        label[10:12, 0:10] = (0, 255, 255)  # instrument clasper, 20 px
        label[20:30, 20:40] = (255, 55, 0)  # kidney parenchyma, 200 px
        label[30:40, 0:5] = (124, 155, 5)  # small intestine, 50 px
        _png(seq / "labels" / f"frame{t:03d}.png", label)
    if labels_json is not None:
        (seq / "labels.json").write_text(json.dumps(labels_json))
    return seq


def test_endovis18_raw_scene_classes(tmp_path):
    _make_ev18(tmp_path)
    sample = EndoVis18Raw(str(tmp_path))[0]
    assert sample.video_id == "seq_3"
    assert [(o.obj_id, o.category, o.kind) for o in sample.objects] == [
        (1, "instrument", "instrument"),
        (11, "kidney parenchyma", "tissue"),
        (12, "covered kidney", "tissue"),
        (13, "thread", "other"),
        (14, "clamps", "other"),
        (15, "suturing needle", "other"),
        (16, "suction instrument", "instrument"),
        (17, "small intestine", "tissue"),
        (18, "ultrasound probe", "instrument"),
    ]
    frame = sample.load(1)
    assert frame.image[0, 0].tolist() == [91, 91, 91]
    counts = {int(k): int(v) for k, v in zip(*np.unique(frame.mask, return_counts=True))}
    assert counts == {0: 2000 - 370, 1: 120, 11: 200, 17: 50}
    parts = EndoVis18Raw(str(tmp_path), merge_instrument_parts=False)[0].load(0).mask
    assert int((parts == 8).sum()) == 100 and int((parts == 9).sum()) == 20


def test_endovis18_raw_bad_input(tmp_path):
    seq = _make_ev18(tmp_path / "a")
    label = np.zeros((40, 50, 3), np.uint8)
    label[5, 5] = (1, 2, 3)
    _png(seq / "labels" / "frame001.png", label)
    sample = EndoVis18Raw(str(tmp_path / "a"))[0]
    with pytest.raises(
        DatasetError, match=r"frame001\.png: label colours not in the class table: \(1, 2, 3\)"
    ):
        sample.load(1)
    (seq / "labels" / "frame000.png").unlink()
    with pytest.raises(DatasetError, match=r"labels/frame000\.png: missing label image for frame"):
        EndoVis18Raw(str(tmp_path / "a"))[0]

    table = [
        {"name": "background-tissue", "color": [0, 0, 0], "classid": 0},
        {"name": "kidney-parenchyma", "color": [255, 55, 0], "classid": 4},
    ]
    _make_ev18(tmp_path / "b", labels_json=table)
    with pytest.raises(DatasetError, match=r"label colours not in the class table: \(0, 255, 0\)"):
        EndoVis18Raw(str(tmp_path / "b"))[0].load(0)
    _make_ev18(
        tmp_path / "c",
        labels_json=[*table, {"name": "harmonic scalpel", "color": [0, 255, 0], "classid": 12}],
    )
    with pytest.raises(DatasetError, match="unknown EndoVis18 class 'harmonic scalpel'"):
        EndoVis18Raw(str(tmp_path / "c"))[0]


# ---------------------------------------------------------------------------------------------
# Bad DAVIS-layout input


def _make_davis(root: Path, frames: int = 3, mask_width: int = 32) -> None:
    for t in range(frames):
        _png(root / "JPEGImages" / "v1" / f"{t:05d}.jpg", np.zeros((24, 32, 3), np.uint8))
        ids = np.zeros((24, mask_width), np.uint8)
        ids[2:6, 3:7] = 1
        _png(root / "Annotations" / "v1" / f"{t:05d}.png", ids, mode="L")


def test_mask_size_must_match_the_frame(tmp_path):
    _make_davis(tmp_path, mask_width=30)
    sample = DavisDataset(str(tmp_path))[0]
    pattern = (
        r"Annotations/v1/00000\.png: mask is 30x24 but frame .*JPEGImages/v1/00000\.jpg is 32x24"
    )
    with pytest.raises(DatasetError, match=pattern):
        sample.load(0)
    with pytest.raises(DatasetError, match=pattern):
        sample.validate()


def test_missing_and_orphan_annotations(tmp_path):
    _make_davis(tmp_path)
    (tmp_path / "Annotations" / "v1" / "00001.png").unlink()
    with pytest.raises(
        DatasetError, match=r"Annotations/v1/00001\.png: missing annotation for frame .*00001\.jpg"
    ):
        DavisDataset(str(tmp_path))[0]
    assert DavisDataset(str(tmp_path), allow_sparse_annotations=True)[0].annotated_frames == [0, 2]
    _png(tmp_path / "Annotations" / "v1" / "00009.png", np.zeros((24, 32), np.uint8), mode="L")
    with pytest.raises(DatasetError, match=r"00009\.png: annotation has no matching frame '00009'"):
        DavisDataset(str(tmp_path), allow_sparse_annotations=True)[0]


def test_empty_split_and_missing_folders(tmp_path):
    (tmp_path / "train" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train/JPEGImages: no video folders \(empty split\)"):
        DavisDataset(str(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"valid: split folder not found"):
        DavisDataset(str(tmp_path), "valid")
    _make_davis(tmp_path / "x")
    shutil.rmtree(tmp_path / "x" / "Annotations")
    with pytest.raises(DatasetError, match=r"x/Annotations: annotations folder not found"):
        DavisDataset(str(tmp_path / "x"))
    (tmp_path / "x" / "Annotations").mkdir()
    with pytest.raises(
        DatasetError, match=r"Annotations/v1: annotation folder of video 'v1' not found"
    ):
        DavisDataset(str(tmp_path / "x"))[0]
    with pytest.raises(DatasetError, match="frames folder not found"):
        DavisDataset(str(tmp_path / "x"), images_dir="Frames")


# ---------------------------------------------------------------------------------------------
# Object storage through fsspec


def test_reader_and_writer_through_fsspec_memory():
    import fsspec

    root = "memory://surgray-datasets-test/ref"
    try:
        dataset = make_synthetic_dataset(root, 2, seed=6, config=CFG, vary=False)
        sample = RefEndoVisDataset(root, "valid")[0]
        clip = _clip_of(dataset, sample.video_id)
        assert sample.frames.describe(3).startswith("memory://")
        assert np.array_equal(sample.load(3).mask, clip.masks[3])
        assert [e.text for e in sample.expressions] == [e.text for e in clip.expressions]
    finally:
        fsspec.filesystem("memory").rm("/surgray-datasets-test", recursive=True)


def test_reader_on_s3(s3_server, tmp_path):
    bucket = s3_server.make_bucket("surgray-datasets")
    root = f"{bucket}/ref"
    options = s3_server.storage
    small = CFG.model_copy(
        update={"num_frames": 8, "leave_and_return": False, "smoke": False, "motion_blur": False}
    )
    dataset = make_synthetic_dataset(
        root, 1, seed=2, config=small, vary=False, valid_fraction=0.0, storage=options
    )
    sample = RefEndoVisDataset(root, "train", storage=options)[0]
    clip = generate_clip(small, seed=dataset.videos[0].seed)
    frame = sample.load(5)
    assert np.array_equal(frame.image, clip.frames[5]) and np.array_equal(frame.mask, clip.masks[5])
    with pytest.raises(DatasetError, match="valid: split folder not found"):
        RefEndoVisDataset(root, "valid", storage=options)
