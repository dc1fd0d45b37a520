"""Property-based fuzzing of manifest reading (hypothesis, bounded).

Properties: whatever the bytes of a JSONL or CSV manifest, `read_manifest` returns tasks and
row errors (every error names its row, every row is a task or an error, at most once) or
raises `ManifestInvalid`; no other exception escapes. A row's `text` and `prompts` cells given
any JSON value are parsed or refused with a `PromptError`.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgray.annotate.manifest import ManifestInvalid, read_manifest
from surgray.annotate.prompts import PromptError, parse_objects, parse_texts

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70_000) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["objects", "obj_id", "frame", "points", "labels", "box", "mask_rle", "size", "counts",
             "label", "text", "x"]
        ),
        inner,
        max_size=5,
    ),
    max_leaves=12,
)  # fmt: skip

rows = st.fixed_dictionaries(
    {"video_uri": st.one_of(st.text(max_size=10), st.just("/v/a.mp4"), st.integers())},
    optional={
        "video_id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
        "text": json_values,
        "prompts": st.one_of(json_values, json_values.map(json.dumps)),
    },
)


def _check(result, lines: int) -> None:
    numbers = [task.row for task in result.tasks] + [error.row for error in result.errors]
    assert all(isinstance(n, int) and 1 <= n <= lines for n in numbers)
    task_rows = [task.row for task in result.tasks]
    assert len(task_rows) == len(set(task_rows))
    assert not set(task_rows) & {error.row for error in result.errors}
    assert all(error.reason for error in result.errors)


@FUZZ
@given(
    st.lists(
        st.one_of(rows.map(lambda r: json.dumps(r).encode()), st.binary(max_size=60)), max_size=6
    )
)
def test_jsonl_of_any_bytes(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "m.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        result = read_manifest(path)
    except ManifestInvalid as exc:
        assert str(exc)
        return
    _check(result, max(len(lines), 1))


@FUZZ
@given(
    header=st.sampled_from([b"video_uri,text", b"video_uri,prompts", b"video_uri,video_id,text"]),
    body=st.lists(st.binary(max_size=50), max_size=6),
)
def test_csv_of_any_bytes(tmp_path_factory, header, body):
    path = tmp_path_factory.mktemp("fuzz") / "m.csv"
    path.write_bytes(b"\n".join([header, *body]))
    try:
        result = read_manifest(path)
    except ManifestInvalid as exc:
        assert str(exc)
        return
    # Quoted cells may span lines: rows number data records, at most one per line.
    _check(result, max(path.read_bytes().count(b"\n") + 1, 1))


@FUZZ
@given(text=json_values, prompts=st.one_of(json_values, json_values.map(json.dumps)))
def test_cells_parse_or_raise_prompt_error(text, prompts):
    try:
        texts, objects = parse_texts(text), parse_objects(prompts)
    except PromptError as exc:
        assert str(exc)
        return
    assert all(isinstance(t, str) and t for t in texts)
    for obj in objects:
        assert obj.kind in ("mask", "box", "box+points", "points")
