"""Raw EndoVis 2017 and 2018 challenge releases, read in place.

EndoVis17 (Robotic Instrument Segmentation), as unzipped from instrument_{1_4,5_8}_{training,
testing}.zip / instrument_9_10_testing.zip, at <root> or one folder below it:

    instrument_dataset_<k>/left_frames/frame000.png            1920x1080 RGB
    instrument_dataset_<k>/ground_truth/<Type>_labels/frame000.png

Each ground-truth folder holds one instrument (e.g. Left_Prograsp_Forceps_labels,
Maryland_Bipolar_Forceps_labels, Other_labels); any non-zero pixel (the part values 10/20/30 or
255) belongs to it. Objects are numbered 1..n in folder-name order; the type comes from the
folder name ("Other" is the ultrasound probe). Frames and masks are cropped to the 1280x1024
image at rows 28:1052, columns 320:1600, as the challenge and ReSurgSAM2's organiser do.

EndoVis18 (Robotic Scene Segmentation), miccai_challenge_*release_<n>/seq_<k>/ or seq_<k>/:

    seq_<k>/left_frames/frame000.png   1280x1024 RGB, used as is
    seq_<k>/labels/frame000.png        RGB-coded scene classes
    seq_<k>/labels.json                optional [{name, color, classid}]; the standard table
                                       below is used when it is absent

Assumptions (not checked against the releases themselves): scene class `classid` becomes object
id classid + 7, which puts kidney parenchyma, covered kidney and small intestine at 11, 12 and
17, the tissue ids of Ref-EndoVis18; the three instrument-part classes (shaft, clasper, wrist)
are merged into one object, id 1, category "instrument", unless merge_instrument_parts=False.
Raw EndoVis18 labels have no instrument types or instances. Every class of the table is listed
as an object, whether or not it appears in a given sequence.
"""

from __future__ import annotations

import re

from surgray.data.categories import category_kind, try_canonical_category
from surgray.data.files import (
    DatasetError,
    basename,
    exists,
    image_files,
    join_uri,
    list_dir,
    read_json,
)
from surgray.data.sample import ObjectMeta, VideoDataset, VideoSample
from surgray.data.sources import (
    ColorClassMaskFiles,
    CropBox,
    ImageFrames,
    PerObjectMaskFiles,
)
from surgray.io.storage import LOCAL, Storage

EV17_CROP = CropBox(top=28, left=320, height=1024, width=1280)
EV18_CLASS_ID_OFFSET = 7
EV18_MERGED_INSTRUMENT_ID = 1
EV18_PART_CLASSES = ("instrument-shaft", "instrument-clasper", "instrument-wrist")
EV18_CLASSES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (0, "background-tissue", (0, 0, 0)),
    (1, "instrument-shaft", (0, 255, 0)),
    (2, "instrument-clasper", (0, 255, 255)),
    (3, "instrument-wrist", (125, 255, 12)),
    (4, "kidney-parenchyma", (255, 55, 0)),
    (5, "covered-kidney", (24, 55, 125)),
    (6, "thread", (187, 155, 25)),
    (7, "clamps", (0, 255, 125)),
    (8, "suturing-needle", (255, 255, 125)),
    (9, "suction-instrument", (123, 15, 175)),
    (10, "small-intestine", (124, 155, 5)),
    (11, "ultrasound-probe", (12, 255, 141)),
)


def _find_folders(root: str, pattern: str, storage: Storage, what: str) -> dict[str, str]:
    """Video id -> folder for folders named like `pattern` at root or one level below."""
    regex = re.compile(pattern)
    found: dict[str, str] = {}
    for entry in list_dir(root, "directory", what="dataset root", storage=storage):
        candidates = (
            [entry]
            if regex.fullmatch(basename(entry))
            else [
                c
                for c in list_dir(entry, "directory", storage=storage)
                if regex.fullmatch(basename(c))
            ]
        )
        for folder in candidates:
            number = regex.fullmatch(basename(folder)).group(1)  # type: ignore[union-attr]
            video_id = f"seq_{int(number)}"
            if video_id in found:  # e.g. the training and testing parts of one sequence
                video_id = f"{video_id}@{basename(entry)}"
            found[video_id] = folder
    if not found:
        raise DatasetError(f"{root}: no {what} folders found (empty dataset)")
    return found


def _frames(folder: str, storage: Storage) -> list[str]:
    frames_dir = join_uri(folder, "left_frames")
    uris = image_files(frames_dir, what="left_frames folder", storage=storage)
    if not uris:
        raise DatasetError(f"{frames_dir}: no frames")
    return uris


class EndoVis17Raw(VideoDataset):
    """Raw EndoVis17 sequences; see the module docstring. `crop=False` keeps 1920x1080."""

    def __init__(
        self,
        root: str,
        *,
        crop: bool = True,
        allow_sparse_annotations: bool = False,
        storage: Storage = LOCAL,
    ) -> None:
        self.dataset_name, self.split = "endovis17", ""
        self.crop = EV17_CROP if crop else None
        self.allow_sparse_annotations = allow_sparse_annotations
        self.storage = storage
        self.folders = _find_folders(
            str(root), r"instrument_dataset_(\d+)", storage, "instrument_dataset_<k>"
        )
        super().__init__(list(self.folders))

    def sample(self, video_id: str) -> VideoSample:
        folder = self.folders[video_id]
        frame_uris = _frames(folder, storage=self.storage)
        names = [basename(u) for u in frame_uris]
        truth = join_uri(folder, "ground_truth")
        if not exists(truth, "directory", storage=self.storage):
            if not self.allow_sparse_annotations:
                raise DatasetError(
                    f"{truth}: ground_truth folder not found (pass allow_sparse_annotations=True to read unlabelled test sequences)"
                )
            instrument_dirs = []
        else:
            instrument_dirs = list_dir(truth, "directory", storage=self.storage)
        objects, per_frame = [], [[] for _ in names]
        for obj_id, instrument_dir in enumerate(instrument_dirs, start=1):
            category = try_canonical_category(basename(instrument_dir))
            if category is None:
                raise DatasetError(
                    f"{instrument_dir}: cannot tell the instrument type from the folder name"
                )
            objects.append(ObjectMeta(obj_id, category, "instrument", basename(instrument_dir)))
            present = {
                basename(u): u for u in list_dir(instrument_dir, "file", storage=self.storage)
            }
            for i, name in enumerate(names):
                if name in present:
                    per_frame[i].append((obj_id, present[name]))
        files = []
        for i, entries in enumerate(per_frame):
            if entries and len(entries) < len(objects):
                have = {obj_id for obj_id, _ in entries}
                lacking = next(d for k, d in enumerate(instrument_dirs, start=1) if k not in have)
                raise DatasetError(
                    f"{join_uri(lacking, names[i])}: missing ground truth for frame {frame_uris[i]}"
                )
            if not entries and objects and not self.allow_sparse_annotations:
                raise DatasetError(
                    f"{join_uri(instrument_dirs[0], names[i])}: missing ground truth for frame {frame_uris[i]}"
                )
            files.append(tuple(entries) if entries else None)
        masks = (
            PerObjectMaskFiles(tuple(files), self.crop, storage=self.storage) if objects else None
        )
        return VideoSample(
            dataset=self.dataset_name,
            split=self.split,
            video_id=video_id,
            frame_names=tuple(n.rsplit(".", 1)[0] for n in names),
            frames=ImageFrames(tuple(frame_uris), self.crop, storage=self.storage),
            masks=masks,
            objects=tuple(objects),
            storage=self.storage,
        )


def ev18_class_table(
    folder: str, storage: Storage
) -> tuple[tuple[int, str, tuple[int, int, int]], ...]:
    """(classid, name, rgb) rows from seq_<k>/labels.json, or the standard table."""
    uri = join_uri(folder, "labels.json")
    if not exists(uri, "file", storage=storage):
        return EV18_CLASSES
    try:
        return tuple(
            (int(row["classid"]), str(row["name"]), tuple(int(c) for c in row["color"][:3]))
            for row in read_json(uri, "class table", storage=storage)
        )  # type: ignore[misc]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{uri}: expected a list of {{name, color, classid}}: {exc!r}") from exc


class EndoVis18Raw(VideoDataset):
    """Raw EndoVis18 sequences with RGB-coded scene labels; see the module docstring."""

    def __init__(
        self,
        root: str,
        *,
        merge_instrument_parts: bool = True,
        allow_sparse_annotations: bool = False,
        storage: Storage = LOCAL,
    ) -> None:
        self.dataset_name, self.split = "endovis18", ""
        self.merge_instrument_parts = merge_instrument_parts
        self.allow_sparse_annotations = allow_sparse_annotations
        self.storage = storage
        self.folders = _find_folders(str(root), r"seq_(\d+)", storage, "seq_<k>")
        super().__init__(list(self.folders))

    def _objects(
        self, folder: str
    ) -> tuple[list[ObjectMeta], tuple[tuple[tuple[int, int, int], int], ...]]:
        objects: dict[int, ObjectMeta] = {}
        colors = []
        for class_id, name, rgb in ev18_class_table(folder, storage=self.storage):
            if class_id == 0 or name.startswith("background"):
                colors.append((rgb, 0))
                continue
            if name in EV18_PART_CLASSES:
                obj_id = (
                    EV18_MERGED_INSTRUMENT_ID
                    if self.merge_instrument_parts
                    else class_id + EV18_CLASS_ID_OFFSET
                )
                objects.setdefault(
                    obj_id,
                    ObjectMeta(
                        obj_id,
                        "instrument",
                        "instrument",
                        "instrument" if self.merge_instrument_parts else name,
                    ),
                )
            else:
                category = try_canonical_category(name)
                if category is None:
                    raise DatasetError(
                        f"{join_uri(folder, 'labels.json')}: unknown EndoVis18 class {name!r}"
                    )
                obj_id = class_id + EV18_CLASS_ID_OFFSET
                objects[obj_id] = ObjectMeta(obj_id, category, category_kind(category), name)
            colors.append((rgb, obj_id))
        return sorted(objects.values(), key=lambda o: o.obj_id), tuple(colors)

    def sample(self, video_id: str) -> VideoSample:
        folder = self.folders[video_id]
        frame_uris = _frames(folder, storage=self.storage)
        labels_dir = join_uri(folder, "labels")
        labels = {
            basename(u): u
            for u in image_files(labels_dir, what="labels folder", storage=self.storage)
        }
        by_frame = []
        for uri in frame_uris:
            label = labels.pop(basename(uri), None)
            if label is None and not self.allow_sparse_annotations:
                raise DatasetError(
                    f"{join_uri(labels_dir, basename(uri))}: missing label image for frame {uri}"
                )
            by_frame.append(label)
        if labels:
            raise DatasetError(
                f"{next(iter(labels.values()))}: label image has no matching frame in {join_uri(folder, 'left_frames')}"
            )
        objects, colors = self._objects(folder)
        return VideoSample(
            dataset=self.dataset_name,
            split=self.split,
            video_id=video_id,
            frame_names=tuple(basename(u).rsplit(".", 1)[0] for u in frame_uris),
            frames=ImageFrames(tuple(frame_uris), storage=self.storage),
            masks=ColorClassMaskFiles(tuple(by_frame), colors, storage=self.storage),
            objects=tuple(objects),
            storage=self.storage,
        )
