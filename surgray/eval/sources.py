"""Ground truth and predictions on disk, as `VideoInput`s for `surgray.eval.evaluate`.

* Ground truth: a DAVIS-style folder, ``<root>/Annotations/<video>/<frame>.png`` (or the
  ``Annotations`` folder itself); palette (or grayscale) PNGs whose pixel value is the object id.
* Predictions: the same layout of PNGs (``<pred>/<video>/<frame>.png``), or Parquet (one file or
  a folder of files) with one row per (video_id, frame_idx, obj_id): a COCO RLE mask in
  ``rle_counts`` and its ``rle_size`` (h, w). Parquet frames are matched to ground-truth PNGs by
  number (``frame_idx`` 12 is ``00012.png``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from surgray.errors import UserError
from surgray.eval.evaluate import Prediction, VideoInput

MissingPolicy = Literal["error", "empty"]
PARQUET_COLUMNS = ("video_id", "frame_idx", "obj_id", "rle_counts", "rle_size")
# root of an annotation store -> its mask rows (an Arrow table), e.g.
# `surgray.annotate.revisions.store_mask_table`
StoreReader = Callable[[Path], Any]


class EvalInputError(UserError, ValueError):
    """Ground truth or predictions are missing, malformed or do not match."""


def read_label_png(path: Path) -> np.ndarray:
    """A PNG's object-id map: palette indices (DAVIS) or gray values."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L", "1", "I", "I;16"):
            raise EvalInputError(
                f"{path}: expected a palette or grayscale PNG of object ids, got mode {image.mode}"
            )
        labels = np.array(image)
    return labels.astype(np.uint8) if labels.dtype == bool else labels


def _frame_sort_key(stem: str) -> tuple:
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def annotation_root(gt: Path) -> Path:
    """The folder holding one sub-folder of PNGs per video."""
    gt = Path(gt)
    if not gt.is_dir():
        raise EvalInputError(f"ground-truth folder not found: {gt}")
    if (gt / "Annotations").is_dir():
        return gt / "Annotations"
    if any(p.is_dir() and any(p.glob("*.png")) for p in gt.iterdir()):
        return gt
    raise EvalInputError(f"{gt}: no Annotations/<video>/<frame>.png ground truth found")


def ground_truth_videos(gt: Path) -> dict[str, tuple[str, ...]]:
    """Video name -> its annotated frame names (PNG stems), in frame order."""
    root = annotation_root(gt)
    videos = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        stems = sorted((p.stem for p in folder.glob("*.png")), key=_frame_sort_key)
        if stems:
            videos[folder.name] = tuple(stems)
    if not videos:
        raise EvalInputError(f"{root}: no video folders with PNG annotations")
    return videos


@dataclass(frozen=True)
class PngPredictions:
    """DAVIS-style prediction folders: ``<root>/<video>/<frame>.png``."""

    root: Path

    @property
    def location(self) -> Path:
        return self.root

    def videos(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_dir()}

    def load(self, video: str, frame: str, shape: tuple[int, int]) -> Prediction | None:
        path = self.root / video / f"{frame}.png"
        return read_label_png(path) if path.is_file() else None

    def describe(self, video: str, frame: str) -> str:
        return str(self.root / video / f"{frame}.png")


class ParquetPredictions:
    """RLE rows read from one Parquet file or a folder of them."""

    def __init__(self, path: Path, read_store: StoreReader | None = None):
        import pyarrow.parquet as pq

        self.path = Path(path)
        schema = pq.read_schema(self._first_file())
        missing = [c for c in PARQUET_COLUMNS if c not in schema.names]
        if missing:
            raise EvalInputError(f"{self.path}: Parquet predictions lack columns {missing}")
        if (self.path / "masks").is_dir() and (self.path / "_done").is_dir():
            if read_store is None:
                raise EvalInputError(
                    f"{self.path} is an annotation store: score it with `surgray eval`, which "
                    "reads each video's latest reviewed revision, or name its masks/ folder"
                )
            # An annotate job's output prefix: each video from its latest reviewed revision.
            table = read_store(self.path).select(list(PARQUET_COLUMNS))
        else:
            # partitioning=None: the annotate job writes hive-style video_id=<id> folders and
            # also a video_id column; reading the folder names as a partition would clash.
            table = pq.read_table(self.path, columns=list(PARQUET_COLUMNS), partitioning=None)
        self._rows: dict[str, dict[int, list[tuple[int, object, tuple[int, int]]]]] = {}
        columns = {name: table.column(name).to_pylist() for name in PARQUET_COLUMNS}
        for video, frame, obj, counts, size in zip(*(columns[c] for c in PARQUET_COLUMNS)):
            self._rows.setdefault(str(video), {}).setdefault(int(frame), []).append(
                (int(obj), counts, (int(size[0]), int(size[1])))
            )

    @property
    def location(self) -> Path:
        return self.path

    def _first_file(self) -> Path:
        if self.path.is_file():
            return self.path
        files = sorted(self.path.rglob("*.parquet"))
        if not files:
            raise EvalInputError(f"{self.path}: no .parquet files")
        return files[0]

    def videos(self) -> set[str]:
        return set(self._rows)

    def load(self, video: str, frame: str, shape: tuple[int, int]) -> Prediction | None:
        from pycocotools import mask as mask_utils

        if not frame.isdigit():
            raise EvalInputError(
                f"video {video!r}: ground-truth frame {frame!r} has no frame number to match "
                "Parquet frame_idx against"
            )
        rows = self._rows.get(video, {}).get(int(frame))
        if rows is None:
            return None
        masks: dict[int, np.ndarray] = {}
        for obj_id, counts, size in rows:
            where = f"video {video!r}, frame_idx {int(frame)}, obj_id {obj_id}"
            if obj_id in masks:
                raise EvalInputError(f"{where}: more than one Parquet row")
            if size != tuple(shape):
                raise EvalInputError(
                    f"{where}: predicted mask is {size[1]}x{size[0]} (w x h) but the ground "
                    f"truth is {shape[1]}x{shape[0]}"
                )
            rle = {"size": list(size), "counts": counts}
            if isinstance(counts, list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(rle, size[0], size[1])
            with warnings.catch_warnings():
                # pycocotools' RLE wrapper predates numpy 2's __array__(copy=) protocol.
                warnings.simplefilter("ignore", DeprecationWarning)
                masks[obj_id] = mask_utils.decode(rle).astype(bool)
        return masks

    def describe(self, video: str, frame: str) -> str:
        return f"{self.path} (video_id={video!r}, frame_idx={int(frame)})"


def open_predictions(
    path: Path, read_store: StoreReader | None = None
) -> PngPredictions | ParquetPredictions:
    """The predictions at `path`: a folder of PNGs, Parquet files, or an annotation store,
    which `read_store` reads (the store's format is the annotate job's, a floor above this)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".parquet":
            raise EvalInputError(f"{path}: predictions must be a folder of PNGs or Parquet")
        return ParquetPredictions(path)
    if not path.is_dir():
        raise EvalInputError(f"prediction folder or file not found: {path}")
    if any(path.rglob("*.parquet")):
        return ParquetPredictions(path, read_store)
    return PngPredictions(path)


def video_inputs(
    gt: Path,
    predictions: PngPredictions | ParquetPredictions,
    missing: MissingPolicy = "error",
    videos: list[str] | None = None,
) -> list[VideoInput]:
    """One `VideoInput` per ground-truth video (or the named ones)."""
    if missing not in ("error", "empty"):
        raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
    root = annotation_root(gt)
    gt_videos = ground_truth_videos(gt)
    if videos:
        unknown = [v for v in videos if v not in gt_videos]
        if unknown:
            raise EvalInputError(f"videos not in the ground truth {root}: {unknown}")
        gt_videos = {v: gt_videos[v] for v in videos}
    predicted = predictions.videos()
    absent = [v for v in gt_videos if v not in predicted]
    if absent and missing == "error":
        raise EvalInputError(
            f"no predictions for videos {absent} in {predictions.location} "
            "(use --missing empty to score them as empty)"
        )
    return [
        VideoInput(name, frames, _frame_loader(root / name, name, predictions, missing))
        for name, frames in gt_videos.items()
    ]


def _frame_loader(
    gt_folder: Path, video: str, predictions, missing: MissingPolicy
) -> Callable[[str], tuple[np.ndarray, Prediction]]:
    def load(frame: str) -> tuple[np.ndarray, Prediction]:
        gt = read_label_png(gt_folder / f"{frame}.png")
        prediction = predictions.load(video, frame, gt.shape)
        if prediction is None:
            if missing == "error":
                raise EvalInputError(
                    f"missing prediction for video {video!r}, frame {frame!r}: "
                    f"{predictions.describe(video, frame)} (use --missing empty to score it as empty)"
                )
            prediction = {}
        return gt, prediction

    return load
