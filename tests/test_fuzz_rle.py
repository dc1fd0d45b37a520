"""Property-based fuzzing of the RLE codec and its pre-decode checks (hypothesis, bounded).

Properties: the vectorised run parser agrees with pycocotools on every mask; any input to
`decode_rle` either decodes to the mask its runs describe or raises `MaskFormatError` (never
another exception, never an allocation beyond the declared limits).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgray.io.errors import MaskFormatError
from surgray.io.masks import decode_rle, encode_rle
from surgray.io.rle_check import MaskTooLarge, check_rle, compressed_runs

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def masks(draw) -> np.ndarray:
    height = draw(st.integers(1, 24))
    width = draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["random", "empty", "full", "box"]))
    if kind == "empty":
        return np.zeros((1, height, width), bool)
    if kind == "full":
        return np.ones((1, height, width), bool)
    if kind == "box":
        mask = np.zeros((1, height, width), bool)
        y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        mask[0, y0 : draw(st.integers(y0 + 1, height)), x0 : draw(st.integers(x0 + 1, width))] = 1
        return mask
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((1, height, width)) < draw(st.floats(0, 1))


def _runs_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(width, height).T


@FUZZ
@given(masks())
def test_run_parser_agrees_with_pycocotools(mask):
    rle = encode_rle(mask)[0]
    runs = compressed_runs(rle["counts"])
    height, width = mask.shape[1:]
    assert runs.min(initial=0) >= 0 and runs.sum() == height * width
    np.testing.assert_array_equal(_runs_to_mask(runs, height, width), mask[0])
    (size, area) = check_rle(rle)
    assert size == (height, width) and area == int(mask.sum())
    np.testing.assert_array_equal(decode_rle([rle])[0], mask[0])


sizes = st.lists(
    st.one_of(st.integers(-3, 70_000), st.floats(allow_nan=True), st.text(max_size=3), st.none()),
    min_size=0,
    max_size=3,
)
counts = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(st.integers(-5, 2**40), max_size=12),
    st.integers(),
    st.none(),
)


@FUZZ
@given(size=sizes, counts=counts, max_side=st.sampled_from([None, 16, 4096]))
def test_arbitrary_rles_decode_or_raise_mask_format_error(size, counts, max_side):
    rle = {"size": size, "counts": counts}
    try:
        masks_ = decode_rle([rle], max_side=max_side, max_pixels=1 << 20)
    except MaskFormatError:
        return
    (height, width) = masks_.shape[1:]
    assert height * width <= 1 << 20
    assert max_side is None or max(height, width) <= max_side


@FUZZ
@given(side=st.integers(4097, 65535), tail=st.text(max_size=20))
def test_any_declared_side_over_the_limit_is_refused_first(side, tail):
    with pytest.raises(MaskTooLarge):
        check_rle({"size": [side, 7], "counts": tail}, max_side=4096)
