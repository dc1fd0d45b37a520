"""Manifest rows are rejected one by one, with their number and reason, for every defect that
is knowable from the row itself (issue 22): bytes that are not UTF-8, and text expressions
combined with point/box/mask prompts. The other rows go ahead."""

from __future__ import annotations

import json

import pytest

from surgray.annotate.manifest import ManifestInvalid, read_manifest

BOX = json.dumps({"objects": [{"obj_id": 1, "frame": 0, "box": [1, 2, 30, 40]}]})


def _by_row(result) -> dict[int, str]:
    return {error.row: error.reason for error in result.errors}


def test_csv_row_that_is_not_utf8_is_rejected_alone(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"video_uri,text\n"
        b"/v/a.mp4,grasper\n"
        b"/v/caf\xe9.mp4,needle\n"  # latin-1
        b'"/v/c.mp4","multi\nline; grasper"\n'
        b"/v/d.mp4,\xff\xfe\n"
    )
    result = read_manifest(path)
    assert [task.video_uri for task in result.tasks] == ["/v/a.mp4", "/v/c.mp4"]
    errors = _by_row(result)
    assert sorted(errors) == [2, 4]
    assert "video_uri: not UTF-8" in errors[2] and "text: not UTF-8" in errors[4]


def test_jsonl_line_that_is_not_utf8_is_rejected_alone(tmp_path):
    path = tmp_path / "m.jsonl"
    good = json.dumps({"video_uri": "/v/a.mp4", "text": ["grasper"]}).encode()
    path.write_bytes(
        b"\xef\xbb\xbf"
        + good
        + b"\n"
        + b'{"video_uri": "/v/b\xe9.mp4", "text": "x"}\n\n'
        + good.replace(b"a.mp4", b"d.mp4")
    )
    result = read_manifest(path)
    errors = _by_row(result)
    assert list(errors) == [2] and "not UTF-8" in errors[2]
    assert [task.row for task in result.tasks] == [1, 4]


def test_csv_header_that_is_not_utf8_rejects_the_manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"video_uri,t\xe9xt\n/v/a.mp4,x\n")
    with pytest.raises(ManifestInvalid, match="header is not UTF-8"):
        read_manifest(path)


def test_text_and_box_in_one_row_is_rejected_when_the_manifest_is_read(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"video_uri": "/v/a.mp4", "text": ["grasper"], "prompts": BOX},
        {"video_uri": "/v/b.mp4", "prompts": BOX},
        {"video_uri": "/v/c.mp4", "text": "needle"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = read_manifest(path)
    assert [task.video_uri for task in result.tasks] == ["/v/b.mp4", "/v/c.mp4"]
    assert list(_by_row(result)) == [1]
    assert "text and prompts in one row" in result.errors[0].reason


def test_row_prompts_conflict_with_the_configs_text_prompts(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"video_uri": "/v/a.mp4", "prompts": BOX}, {"video_uri": "/v/b.mp4"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = read_manifest(path, global_texts=("grasper",))
    assert [task.video_uri for task in result.tasks] == ["/v/b.mp4"]
    assert "config's prompts" in _by_row(result)[1]


def test_mask_prompt_declaring_a_huge_size_is_rejected_without_decoding(tmp_path):
    """A 65535 x 65535 mask in a row would take 4 GiB to decode: refused from its header."""
    huge = {"size": [65535, 65535], "counts": "0" * 8}
    prompts = json.dumps({"objects": [{"obj_id": 1, "frame": 0, "mask_rle": huge}]})
    path = tmp_path / "m.jsonl"
    rows = [
        {"video_uri": "/v/a.mp4", "prompts": prompts},
        {"video_uri": "/v/b.mp4", "prompts": BOX},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = read_manifest(path)
    assert [task.video_uri for task in result.tasks] == ["/v/b.mp4"]
    assert "mask_rle" in _by_row(result)[1]


def test_reasons_stay_short_whatever_the_row_holds(tmp_path):
    """A 10 KB video_id or prompt key is named by a prefix: reports and logs stay small."""
    path = tmp_path / "m.jsonl"
    rows = [
        {"video_uri": "/v/a.mp4", "video_id": "x" * 10_000, "text": "grasper"},
        {
            "video_uri": "/v/b.mp4",
            "prompts": {"objects": [{"obj_id": 1, "frame": 0, "k" * 10_000: 1}]},
        },
        {"video_uri": "/v/c.mp4", "text": "needle"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = read_manifest(path)
    assert sorted(_by_row(result)) == [1, 2]
    assert all(len(reason) <= 300 for reason in _by_row(result).values())
