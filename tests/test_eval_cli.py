"""`surgray eval` end to end on a tiny DAVIS-style folder, with PNG and Parquet predictions.

The video is the hand-worked one of tests/test_metrics.py (2x4 label maps, radius 1):
video a, object 1: J 1, 1/2, 0, 1; F 1, 1, 4/5, 1; Dice 1, 2/3, 0, 1 over frames 0-3;
video a, object 2 (from frame 2): J 1, 1/2; F 1, 1; Dice 1, 2/3; video b, object 1: perfect.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from surgray.cli import main

VIDEOS = {
    "a": {
        "00000": ([[1, 1, 0, 0], [0, 0, 0, 0]], [[1, 1, 0, 0], [0, 0, 0, 0]]),
        "00001": ([[1, 1, 0, 0], [0, 0, 0, 0]], [[1, 0, 0, 0], [0, 0, 0, 0]]),
        "00002": ([[1, 1, 0, 0], [0, 0, 2, 2]], [[0, 0, 1, 1], [0, 0, 2, 2]]),
        "00003": ([[1, 1, 0, 0], [0, 0, 2, 2]], [[1, 1, 0, 0], [0, 0, 0, 2]]),
    },
    "b": {f: ([[0, 1, 1, 0], [0, 0, 0, 0]],) * 2 for f in ("00000", "00001")},
}
PALETTE = [0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 9)


def _save_png(path: Path, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.array(labels, np.uint8), mode="P")
    image.putpalette(PALETTE)
    image.save(path)


def _write_parquet(path: Path, videos: dict, size_override=None) -> None:
    rows = {"video_id": [], "frame_idx": [], "obj_id": [], "rle_counts": [], "rle_size": []}
    for video, frames in videos.items():
        for frame, (_, pred) in frames.items():
            pred = np.array(pred, np.uint8)
            for obj_id in np.unique(pred[pred > 0]):
                rle = mask_utils.encode(np.asfortranarray((pred == obj_id).astype(np.uint8)))
                rows["video_id"].append(video)
                rows["frame_idx"].append(int(frame))
                rows["obj_id"].append(int(obj_id))
                rows["rle_counts"].append(rle["counts"].decode("ascii"))
                rows["rle_size"].append(list(size_override or rle["size"]))
    pq.write_table(pa.table(rows), path)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    for video, frames in VIDEOS.items():
        for frame, (gt, pred) in frames.items():
            _save_png(tmp_path / "gt" / "Annotations" / video / f"{frame}.png", gt)
            _save_png(tmp_path / "pred" / video / f"{frame}.png", pred)
    _write_parquet(tmp_path / "pred.parquet", VIDEOS)
    return tmp_path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["eval", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _csv(path: Path) -> dict[tuple[str, str, str], dict]:
    with open(path) as f:
        return {(r["scope"], r["video"], r["object_id"]): r for r in csv.DictReader(f)}


def test_png_predictions_table_csv_and_json(dataset, capsys):
    out = dataset / "out"
    rc, stdout, err = _run(
        capsys,
        *("--gt", str(dataset / "gt"), "--pred", str(dataset / "pred"), "--out-dir", str(out)),
        *("--no-skip-first-last", "--id-group", "one=1", "--id-group", "two=2"),
    )
    assert rc == 0, err
    lines = [line.split() for line in stdout.splitlines()]
    assert ["video", "obj", "group", "frames", "J&F", "J", "F", "Dice", "CIoU"] in lines
    assert ["a", "001", "one", "4", "78.75", "62.50", "95.00", "66.67"] in lines
    assert ["a", "002", "two", "2", "87.50", "75.00", "100.00", "83.33"] in lines
    assert ["b", "001", "one", "2", "100.00", "100.00", "100.00", "100.00"] in lines
    # Video a: J (0.625 + 0.75) / 2, F (0.95 + 1) / 2, Dice (2/3 + 5/6) / 2, CIoU 2.75 / 4 (its
    # J&F, 83.125, sits on a rounding tie and is left out).
    [video_a] = [line for line in lines if line[:2] == ["a", "all"]]
    assert video_a[2:3] + video_a[4:] == ["4", "68.75", "97.50", "75.00", "68.75"]
    assert ["Global", "score", "6", "88.75", "79.17", "98.33", "83.33", "79.17"] in lines
    assert ["Global", "(two)", "6", "87.50", "75.00", "100.00", "83.33", "75.00"] in lines

    rows = _csv(out / "eval_results.csv")
    a1 = rows[("object", "a", "1")]
    assert (a1["group"], a1["frames"], float(a1["J"]), float(a1["F"])) == ("one", "4", 0.625, 0.95)
    assert float(a1["Dice"]) == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert float(rows[("video", "b", "")]["challenge_iou"]) == 1.0
    dataset_row = rows[("dataset", "", "")]
    assert (dataset_row["objects"], dataset_row["challenge_frames"]) == ("3", "6")
    assert float(dataset_row["J"]) == pytest.approx((0.625 + 0.75 + 1) / 3)
    assert float(dataset_row["challenge_iou"]) == pytest.approx(4.75 / 6)
    assert float(rows[("group:one", "", "")]["challenge_iou"]) == pytest.approx(4.5 / 6)

    report = json.loads((out / "eval_results.json").read_text())
    assert report["options"]["skip_first_and_last"] is False
    assert report["options"]["id_groups"] == [
        {"name": "one", "ids": [1]},
        {"name": "two", "ids": [2]},
    ]
    assert report["overall"]["j"] == pytest.approx((0.625 + 0.75 + 1) / 3)
    assert report["overall"]["jf"] == pytest.approx(0.8875)
    [video_a] = [v for v in report["videos"] if v["video"] == "a"]
    assert [(o["object_id"], o["frames"], o["j"]) for o in video_a["objects"]] == [
        (1, 4, 0.625),
        (2, 2, 0.75),
    ]


def test_parquet_predictions_give_the_same_report(dataset, capsys):
    common = ("--gt", str(dataset / "gt"), "--no-skip-first-last", "--endovis18-groups")
    rc_png, _, err = _run(
        capsys, *common, "--pred", str(dataset / "pred"), "--out-dir", str(dataset / "o1")
    )
    assert rc_png == 0, err
    rc_pq, _, err = _run(capsys, *common, "--pred", str(dataset / "pred.parquet"), "--out-dir", str(dataset / "o2"))  # fmt: skip
    assert rc_pq == 0, err
    png_csv = (dataset / "o1" / "eval_results.csv").read_text()
    assert (dataset / "o2" / "eval_results.csv").read_text() == png_csv
    assert "group:instrument" in png_csv and "group:tissue" in png_csv


def test_default_skips_first_and_last_frames(dataset, capsys):
    out = dataset / "out"
    rc, _, err = _run(capsys, "--gt", str(dataset / "gt"), "--pred", str(dataset / "pred"), "--out-dir", str(out))  # fmt: skip
    assert rc == 0, err
    rows = _csv(out / "eval_results.csv")
    a1, a2 = rows[("object", "a", "1")], rows[("object", "a", "2")]
    assert (a1["frames"], float(a1["J"]), float(a1["F"])) == ("2", 0.25, 0.9)
    assert (a2["frames"], float(a2["J"])) == ("1", 1.0)
    assert rows[("video", "b", "")]["frames"] == "0"  # 2 frames, both skipped
    assert ("object", "b", "1") not in rows

    rc, _, err = _run(capsys, "--gt", str(dataset / "gt"), "--pred", str(dataset / "pred"), "--out-dir", str(out), "--videos", "b")  # fmt: skip
    assert rc == 0, err
    assert {key[1] for key in _csv(out / "eval_results.csv")} == {"b", ""}


def test_missing_prediction_frame_errors_or_counts_as_empty(dataset, capsys):
    (dataset / "pred" / "a" / "00003.png").unlink()
    args = ("--gt", str(dataset / "gt"), "--pred", str(dataset / "pred"), "--no-skip-first-last")
    rc, _, err = _run(capsys, *args, "--out-dir", str(dataset / "o1"))
    assert rc == 2
    assert "missing prediction for video 'a', frame '00003'" in err
    assert str(dataset / "pred" / "a" / "00003.png") in err
    rc, _, err = _run(capsys, *args, "--out-dir", str(dataset / "o2"), "--missing", "empty")
    assert rc == 0, err
    a1 = _csv(dataset / "o2" / "eval_results.csv")[("object", "a", "1")]
    assert float(a1["J"]) == (1 + 0.5 + 0 + 0) / 4


def test_bad_inputs_are_named(dataset, capsys):
    gt, pred = str(dataset / "gt"), str(dataset / "pred")
    rc, _, err = _run(capsys, "--gt", str(dataset / "nope"), "--pred", pred)
    assert rc == 2 and f"ground-truth folder not found: {dataset / 'nope'}" in err
    rc, _, err = _run(capsys, "--gt", gt, "--pred", str(dataset / "nope"))
    assert rc == 2 and "prediction folder or file not found" in err
    rc, _, err = _run(capsys, "--gt", gt, "--pred", pred, "--videos", "a", "zzz")
    assert rc == 2 and "videos not in the ground truth" in err and "['zzz']" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects it while parsing
        main(["eval", "--gt", gt, "--pred", pred, "--id-group", "t=11,x"])
    assert exit_info.value.code == 2
    assert "bad object ids in 't=11,x'" in capsys.readouterr().err

    _save_png(dataset / "pred" / "a" / "00001.png", np.ones((3, 5)))
    rc, _, err = _run(capsys, "--gt", gt, "--pred", pred, "--out-dir", str(dataset / "o"))
    assert rc == 2
    assert "video 'a', frame '00001': predicted mask is (5, 3) (w, h)" in err
    assert "ground truth is (4, 2)" in err

    for png in (dataset / "pred" / "b").glob("*.png"):
        png.unlink()
    (dataset / "pred" / "b").rmdir()
    rc, _, err = _run(capsys, "--gt", gt, "--pred", pred, "--out-dir", str(dataset / "o"))
    assert rc == 2 and "no predictions for videos ['b']" in err


def test_parquet_size_mismatch_and_columns(dataset, capsys):
    bad = dataset / "bad.parquet"
    _write_parquet(bad, VIDEOS, size_override=[3, 5])
    rc, _, err = _run(capsys, "--gt", str(dataset / "gt"), "--pred", str(bad))
    assert rc == 2
    assert "video 'a', frame_idx 1, obj_id 1: predicted mask is 5x3 (w x h)" in err
    assert "ground truth is 4x2" in err

    pq.write_table(pa.table({"video_id": ["a"], "frame_idx": [0]}), dataset / "cols.parquet")
    rc, _, err = _run(capsys, "--gt", str(dataset / "gt"), "--pred", str(dataset / "cols.parquet"))
    assert rc == 2 and "lack columns ['obj_id', 'rle_counts', 'rle_size']" in err
