"""Exporters: each format written, then read back with pyarrow, Pillow, json, PyAV, pycocotools."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from surgray.io.errors import MaskFormatError
from surgray.io.exports import (
    MaskRecord,
    read_parquet,
    write_coco_video_json,
    write_contact_sheet,
    write_davis,
    write_overlay_video,
    write_parquet,
    write_sav_json,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 48, 64
FRAMES = 6


def rectangle(frame_idx: int) -> np.ndarray:
    """Object 1: rows 10..19, columns 5+f .. 24+f (10 x 20 = 200 pixels)."""
    mask = np.zeros((H, W), bool)
    mask[10:20, 5 + frame_idx : 25 + frame_idx] = True
    return mask


def square(frame_idx: int) -> np.ndarray:
    """Object 2, frames 2..5 only: rows 15..29, columns 20..34 (15 x 15 = 225 pixels)."""
    mask = np.zeros((H, W), bool)
    mask[15:30, 20:35] = True
    return mask


@pytest.fixture(scope="module")
def records() -> list[MaskRecord]:
    out: list[MaskRecord] = []
    for f in range(FRAMES):
        if f < 2:
            out += MaskRecord.from_masks("case01", f, [1], ["grasper"], [0.9], rectangle(f)[None])
        else:
            masks = np.stack([rectangle(f), square(f)])
            out += MaskRecord.from_masks(
                "case01", f, [1, 2], ["grasper", "hook"], [0.9, 0.95], masks
            )
    return out


def png_chunks(payload: bytes) -> set[str]:
    chunks, offset = set(), 8
    while offset < len(payload):
        length = int.from_bytes(payload[offset : offset + 4], "big")
        chunks.add(payload[offset + 4 : offset + 8].decode())
        offset += length + 12
    return chunks


def reference_counts(mask: np.ndarray) -> str:
    return coco_mask.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0][
        "counts"
    ].decode()


def test_parquet_schema_values_and_round_trip(tmp_path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert write_parquet(tmp_path / "masks.parquet", records) == 10
    table = pq.read_table(tmp_path / "masks.parquet")
    assert table.schema.names == [
        "video_id", "frame_idx", "obj_id", "label", "score", "rle_counts", "rle_size", "bbox", "area",
    ]  # fmt: skip
    assert table.schema.field("rle_size").type == pa.list_(pa.int32(), 2)
    assert table.schema.field("bbox").type == pa.list_(pa.float32(), 4)
    assert table.schema.metadata is None  # nothing beyond the columns themselves
    rows = table.to_pylist()
    first = rows[0]
    assert (first["video_id"], first["frame_idx"], first["obj_id"], first["label"]) == (
        "case01",
        0,
        1,
        "grasper",
    )
    assert first["score"] == pytest.approx(0.9)
    assert first["rle_size"] == [48, 64]
    assert first["bbox"] == [5.0, 10.0, 20.0, 10.0]
    assert first["area"] == 200
    assert first["rle_counts"] == reference_counts(rectangle(0))
    hook = [r for r in rows if r["obj_id"] == 2]
    assert [r["frame_idx"] for r in hook] == [2, 3, 4, 5]
    assert {r["area"] for r in hook} == {225}
    assert hook[0]["bbox"] == [20.0, 15.0, 15.0, 15.0]

    back = read_parquet(tmp_path / "masks.parquet")
    assert [(r.video_id, r.frame_idx, r.obj_id, r.label) for r in back] == [
        (r.video_id, r.frame_idx, r.obj_id, r.label) for r in records
    ]
    np.testing.assert_array_equal(back[-1].mask(), square(5))


def test_parquet_part_of_more_than_255_masks(tmp_path):
    """A part's areas come from pycocotools, which took at most 255 masks at once."""
    many = []
    for f in range(150):
        masks = np.stack([rectangle(f % 30), square(f)])
        many += MaskRecord.from_masks("long", f, [1, 2], ["grasper", "hook"], [0.9, 0.8], masks)
    path = str(tmp_path / "long.parquet")
    write_parquet(path, many)
    import pyarrow.parquet as pq

    areas = pq.read_table(path).column("area").to_pylist()
    assert areas == [200, 225] * 150
    assert len(read_parquet(path)) == 300


def test_parquet_on_s3(s3_server, records):
    bucket = s3_server.make_bucket("exports")
    opts = s3_server.storage
    write_parquet(f"{bucket}/run/case01.parquet", records, storage=opts)
    back = read_parquet(f"{bucket}/run/case01.parquet", storage=opts)
    assert len(back) == 10 and back[3].rle == records[3].rle


def test_davis_folder(tmp_path, records):
    from PIL import Image

    from surgray.io.masks import davis_palette

    assert write_davis(tmp_path / "davis", records, frame_counts={"case01": 7}) == {"case01": 7}
    names = sorted(p.name for p in (tmp_path / "davis" / "case01").iterdir())
    assert names == [f"{i:05d}.png" for i in range(7)]
    for f in range(7):
        image = Image.open(tmp_path / "davis" / "case01" / f"{f:05d}.png")
        assert image.mode == "P"
        expected = np.zeros((H, W), np.uint8)
        if f < FRAMES:
            expected[rectangle(f)] = 1
        if 2 <= f < FRAMES:
            expected[square(f)] = 2  # the hook scores higher, so it wins the overlap
        np.testing.assert_array_equal(np.asarray(image), expected)
    palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[:3], davis_palette()[:3])
    assert palette[1].tolist() == [128, 0, 0]


def test_sav_masklet_json(tmp_path, records):
    write_sav_json(tmp_path / "case01_manual.json", records, fps=24.0, frame_count=12)
    data = json.loads((tmp_path / "case01_manual.json").read_text())
    assert data["video_id"] == "case01"
    assert (data["video_height"], data["video_width"], data["video_resolution"]) == (
        48.0,
        64.0,
        3072.0,
    )
    assert data["video_frame_count"] == 12.0 and data["video_duration"] == 0.5
    assert data["masklet_id"] == [1, 2] and data["masklet_num"] == 2
    assert data["masklet_frame_idx"] == [0, 1, 2, 3, 4, 5]
    assert data["masklet_label"] == ["grasper", "hook"]
    assert data["masklet_frame_count"] == [6, 4]
    assert data["masklet_first_appeared_frame"] == [0, 2]
    assert data["masklet_size_abs"] == [200.0, 225.0]
    assert data["masklet_size_bucket"] == ["small", "small"]
    masklet = data["masklet"]
    assert len(masklet) == 6 and all(len(row) == 2 for row in masklet)
    assert all(rle["size"] == [48, 64] for row in masklet for rle in row)
    # Absent object: an empty mask, as SA-V stores it.
    assert (
        coco_mask.decode([dict(masklet[0][1], counts=masklet[0][1]["counts"].encode())]).sum() == 0
    )
    decoded = coco_mask.decode([dict(masklet[3][1], counts=masklet[3][1]["counts"].encode())])[
        :, :, 0
    ]
    np.testing.assert_array_equal(decoded.astype(bool), square(3))


def test_coco_video_json(tmp_path, records):
    write_coco_video_json(tmp_path / "coco.json", records, {"case01": 8})
    data = json.loads((tmp_path / "coco.json").read_text())
    assert data["videos"] == [{"id": 1, "name": "case01", "height": 48, "width": 64, "length": 8}]
    assert data["categories"] == [{"id": 1, "name": "grasper"}, {"id": 2, "name": "hook"}]
    first, second = data["annotations"]
    assert (first["id"], first["video_id"], first["obj_id"], first["category_id"]) == (1, 1, 1, 1)
    assert (second["obj_id"], second["category_id"]) == (2, 2)
    assert len(first["segmentations"]) == 8
    assert second["segmentations"][:2] == [None, None] and second["segmentations"][6:] == [
        None,
        None,
    ]
    assert first["areas"][:6] == [200] * 6 and first["areas"][6:] == [None, None]
    assert second["bboxes"][2] == [20.0, 15.0, 15.0, 15.0]
    rle = second["segmentations"][4]
    decoded = coco_mask.decode([{"size": rle["size"], "counts": rle["counts"].encode()}])[:, :, 0]
    np.testing.assert_array_equal(decoded.astype(bool), square(4))
    with pytest.raises(MaskFormatError, match="lacks videos"):
        write_coco_video_json(tmp_path / "bad.json", records, {})


@pytest.fixture(scope="module")
def source_video(tmp_path_factory):
    """A grey clip whose container carries patient-like metadata tags."""
    path = tmp_path_factory.mktemp("src") / "case01.mp4"
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "Jane Doe 1970-01-01"
        out.metadata["comment"] = "MRN 123456"
        out.metadata["creation_time"] = "2024-05-01T10:00:00Z"
        stream = out.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 100, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with av.open(str(path)) as check:
        assert check.metadata.get("title") == "Jane Doe 1970-01-01"
    return path


def test_overlay_video_has_frames_colours_and_no_metadata(tmp_path, records, source_video):
    from surgray.io.video import VideoReader

    out = tmp_path / "overlay.mp4"
    result = write_overlay_video(out, VideoReader(source_video), records, fps=12, crf=12)
    assert result.frame_count == FRAMES
    with av.open(str(out)) as container:
        tags = dict(container.metadata) | dict(container.streams.video[0].metadata)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES
    assert not {"title", "comment", "creation_time", "encoder"} & set(tags)
    payload = out.read_bytes()
    assert b"Jane Doe" not in payload and b"MRN" not in payload
    # Inside object 1 (DAVIS colour 128,0,0) at alpha 0.5 over grey 100: (114, 50, 50), below
    # its label (which sits inside the frame, over the object's top rows here).
    inside = frames[0][18, 12].astype(int)
    assert np.abs(inside - [114, 50, 50]).max() <= 12, inside
    # Outside every mask the grey is untouched.
    assert np.abs(frames[0][40, 60].astype(int) - 100).max() <= 6


def test_contact_sheet_size(tmp_path, records, source_video):
    from PIL import Image

    from surgray.io.video import VideoReader

    size = write_contact_sheet(
        tmp_path / "sheet.png", VideoReader(source_video), records, columns=4, tile_width=80
    )
    # 6 tiles of 80 x round(80 * 48 / 64) = 60 in 4 columns: 2 rows -> 120 x 320.
    assert size == (120, 320)
    with Image.open(tmp_path / "sheet.png") as image:
        assert image.size == (320, 120) and image.mode == "RGB"
    assert png_chunks((tmp_path / "sheet.png").read_bytes()) <= {"IHDR", "IDAT", "IEND"}
    tile_colour = np.asarray(Image.open(tmp_path / "sheet.png"))[20, 15].astype(int)
    assert tile_colour[0] > tile_colour[1] + 30  # object 1 tinted red in the first tile


def test_export_errors(tmp_path, records):
    other = MaskRecord.from_masks("case02", 0, [1], ["grasper"], [0.5], rectangle(0)[None])
    with pytest.raises(MaskFormatError, match="one video"):
        write_sav_json(tmp_path / "x.json", records + other, fps=24, frame_count=6)
    with pytest.raises(MaskFormatError, match="one video"):
        write_contact_sheet(tmp_path / "x.png", [], records + other)
    big_id = MaskRecord.from_masks("case03", 0, [300], ["x"], [0.5], rectangle(0)[None])
    with pytest.raises(MaskFormatError, match="1..255"):
        write_davis(tmp_path / "d", big_id)
    small = MaskRecord.from_masks("case01", 7, [1], ["grasper"], [0.5], np.zeros((1, 4, 4), bool))
    with pytest.raises(MaskFormatError, match="share a size"):
        write_davis(tmp_path / "d", records + small)
    with pytest.raises(MaskFormatError, match="3 ids"):
        MaskRecord.from_masks("v", 0, [1, 2, 3], ["a"] * 3, [1.0] * 3, np.zeros((2, 4, 4), bool))
