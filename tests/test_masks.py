"""Mask codecs: COCO RLE through pycocotools, DAVIS palette PNGs, binary PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from surgray.io.errors import MaskFormatError
from surgray.io.masks import (
    davis_palette,
    decode_rle,
    encode_rle,
    ids_to_masks,
    mask_bbox,
    masks_to_ids,
    read_binary_png,
    read_index_png,
    rle_area,
    rle_bbox,
    write_binary_png,
    write_index_png,
)

# Column-major runs of HAND: 4 zeros, 2 ones, 2 zeros, 2 ones, 5 zeros, 1 one = [4,2,2,2,5,1].
# COCO's string stores runs from the fourth on as differences to the run two before:
# 4, 2, 2, (2-2)=0, (5-2)=3, (1-2)=-1 -> "4", "2", "2", "0", "3", "O" (-1 is 31 + 48).
HAND = np.array(
    [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]],
    dtype=bool,
)
HAND_COUNTS = "42203O"


def test_hand_made_rle_literal():
    (rle,) = encode_rle(HAND[None])
    assert rle == {"size": [4, 4], "counts": HAND_COUNTS}
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle([rle])[0], HAND)
    # Uncompressed runs give the same mask.
    np.testing.assert_array_equal(
        decode_rle([{"size": [4, 4], "counts": [4, 2, 2, 2, 5, 1]}])[0], HAND
    )
    assert rle_area([rle]).tolist() == [5]
    assert rle_bbox([rle]).tolist() == [[1.0, 0.0, 3.0, 4.0]]
    assert mask_bbox(HAND[None]).tolist() == [[1.0, 0.0, 3.0, 4.0]]


def test_batched_round_trip_matches_pycocotools():
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(0)
    masks = rng.random((5, 23, 31)) > 0.6
    masks[3] = False  # an empty object
    rles = encode_rle(masks)
    assert len(rles) == 5 and all(r["size"] == [23, 31] for r in rles)
    reference = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in rles] == [r["counts"].decode() for r in reference]
    np.testing.assert_array_equal(decode_rle(rles), masks)
    assert rle_area(rles).tolist() == masks.sum(axis=(1, 2)).tolist()
    np.testing.assert_array_equal(rle_bbox(rles), mask_bbox(masks))
    assert rle_bbox(rles)[3].tolist() == [0.0, 0.0, 0.0, 0.0]
    # bytes counts (as pycocotools gives them) are accepted too
    np.testing.assert_array_equal(decode_rle(reference), masks)


def test_more_masks_than_pycocotools_area_takes_at_once():
    """pycocotools' `area` fails above 255 RLEs under numpy 2; a Parquet part of 120 frames x 3
    objects (360 masks) failed the whole video. Every count of a 600-mask stack is right."""
    rng = np.random.default_rng(1)
    masks = rng.random((600, 9, 7)) > 0.5
    rles = encode_rle(masks)
    expected = masks.sum(axis=(1, 2))
    assert rle_area(rles).tolist() == expected.tolist()
    assert rle_area(rles).dtype == np.int64
    np.testing.assert_array_equal(decode_rle(rles), masks)  # checks the areas it declares


def test_empty_stacks():
    assert encode_rle(np.zeros((0, 3, 4), bool)) == []
    assert decode_rle([], size=(3, 4)).shape == (0, 3, 4)
    assert rle_area([]).shape == (0,)
    with pytest.raises(MaskFormatError, match="needs size"):
        decode_rle([])


def test_rle_errors_name_the_problem():
    with pytest.raises(MaskFormatError, match=r"\[N, H, W\]"):
        encode_rle(HAND)
    with pytest.raises(MaskFormatError, match="must be bool"):
        encode_rle(HAND[None].astype(np.float32))
    with pytest.raises(MaskFormatError, match="share a size"):
        decode_rle(encode_rle(HAND[None]) + encode_rle(np.zeros((1, 2, 2), bool)))
    with pytest.raises(MaskFormatError, match="'size' and 'counts'"):
        decode_rle([{"counts": HAND_COUNTS}])
    with pytest.raises(MaskFormatError, match="runs sum to 15"):
        decode_rle([{"size": [4, 4], "counts": [4, 2, 2, 2, 5]}])
    with pytest.raises(MaskFormatError, match="corrupt RLE"):
        decode_rle([{"size": [4, 4], "counts": HAND_COUNTS + "5"}])  # runs past 16 pixels


def test_davis_palette_values():
    palette = davis_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:10].tolist() == [
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [128, 128, 0],
        [0, 0, 128],
        [128, 0, 128],
        [0, 128, 128],
        [128, 128, 128],
        [64, 0, 0],
        [192, 0, 0],
    ]
    assert palette[20].tolist() == [0, 64, 128]
    assert palette[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in palette.tolist()}) == 256


def test_index_png_round_trip(tmp_path):
    from PIL import Image

    ids = np.zeros((6, 7), np.uint8)
    ids[1:3, 1:4] = 1
    ids[4:, 5:] = 2
    ids[0, 6] = 255
    write_index_png(tmp_path / "00000.png", ids)
    image = Image.open(tmp_path / "00000.png")
    assert image.mode == "P"
    assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    np.testing.assert_array_equal(read_index_png(tmp_path / "00000.png"), ids)
    assert np.asarray(image.convert("RGB"))[1, 1].tolist() == [128, 0, 0]

    with pytest.raises(MaskFormatError, match="0..255"):
        write_index_png(tmp_path / "x.png", np.full((2, 2), 300))
    with pytest.raises(MaskFormatError, match=r"\[H, W\]"):
        write_index_png(tmp_path / "x.png", np.zeros((2, 2, 2), np.uint8))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(MaskFormatError, match="mode RGB"):
        read_index_png(tmp_path / "rgb.png")
    with pytest.raises(MaskFormatError, match="file not found"):
        read_index_png(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(MaskFormatError, match="not a readable image"):
        read_index_png(tmp_path / "text.png")


def test_binary_png_round_trip(tmp_path):
    write_binary_png(tmp_path / "m.png", HAND)
    np.testing.assert_array_equal(read_binary_png(tmp_path / "m.png"), HAND)
    from PIL import Image

    assert sorted(np.unique(np.asarray(Image.open(tmp_path / "m.png"))).tolist()) == [0, 255]
    with pytest.raises(MaskFormatError, match="bool"):
        write_binary_png(tmp_path / "m.png", HAND.astype(np.uint8))


def test_ids_and_masks_convert_both_ways():
    a = np.zeros((3, 3), bool)
    a[0] = True
    b = np.zeros((3, 3), bool)
    b[:, 0] = True
    ids = masks_to_ids(np.stack([a, b]), [3, 7])
    assert ids.tolist() == [[7, 3, 3], [7, 0, 0], [7, 0, 0]]  # later object wins the overlap
    obj_ids, masks = ids_to_masks(ids)
    assert obj_ids == [3, 7]
    assert masks[0].tolist() == [[False, True, True], [False] * 3, [False] * 3]
    with pytest.raises(MaskFormatError, match="object ids"):
        masks_to_ids(np.stack([a]), [1, 2])
    with pytest.raises(MaskFormatError, match="1..255"):
        masks_to_ids(np.stack([a]), [0])
