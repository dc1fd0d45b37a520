"""Text prompts carry the object id the user gives (`{"text": ..., "obj_id": N}`), and that id is
the one the annotate job tracks the object under; expressions without one get 1, 2, ... skipping
the ids given. The end-to-end check (Parquet, PNGs, summary, `surgray eval`) is in test_demo.py.
"""

from __future__ import annotations

import json

import pytest

from surgray.annotate.prompts import PromptError, VideoPrompts, parse_text_prompts, parse_texts


def test_text_items_may_name_their_object_id():
    texts, ids = parse_text_prompts(
        [{"text": " kidney ", "obj_id": 11}, "grasper", {"text": "clip", "obj_id": 1}, "kidney"]
    )
    assert texts == ("kidney", "grasper", "clip") and ids == (11, None, 1)
    prompts = VideoPrompts.from_cells(json.dumps([{"text": "kidney", "obj_id": 11}, "grasper"]))
    assert prompts.text_objects() == [(11, "kidney"), (1, "grasper")]
    mixed = VideoPrompts(("a", "b", "c"), text_ids=(None, 1, None))
    assert mixed.text_objects() == [(2, "a"), (1, "b"), (3, "c")]  # given ids are never reused
    assert parse_texts("a; b") == ("a", "b")  # the plain forms are unchanged


def test_plain_texts_keep_their_ids_and_their_prompt_hash():
    plain = VideoPrompts.from_cells(["grasper", "kidney"])
    assert plain.text_ids == () and plain.text_objects() == [(1, "grasper"), (2, "kidney")]
    assert plain.to_json() == VideoPrompts(("grasper", "kidney")).to_json()
    assert "text_ids" not in plain.to_json()  # earlier runs' provenance hashes still match
    given = VideoPrompts.from_cells([{"text": "kidney", "obj_id": 11}])
    assert VideoPrompts.from_json(given.to_json()) == given
    assert given.to_json() != VideoPrompts(("kidney",)).to_json()  # another id: another run


def test_job_wide_texts_go_first_and_keep_the_rows_ids():
    row = VideoPrompts.from_cells([{"text": "kidney", "obj_id": 11}, "grasper"])
    merged = row.with_texts(("smoke", "kidney"))
    assert merged.texts == ("smoke", "kidney", "grasper")
    assert merged.text_objects() == [(1, "smoke"), (11, "kidney"), (2, "grasper")]


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ([{"text": "a", "obj_id": 0}], r"obj_id must be an integer >= 1, got 0"),
        ([{"text": "a", "obj_id": "3"}], r"obj_id must be an integer >= 1"),
        ([{"text": "a", "obj_id": 2}, {"text": "b", "obj_id": 2}], "obj_id values must be unique"),
        ([{"txt": "a"}], r"must be a string or \{\"text\""),
        ([{"text": "  ", "obj_id": 2}], "expression 0 is empty"),
    ],
)
def test_bad_text_ids_are_refused_with_the_reason(cell, message):
    with pytest.raises(PromptError, match=message):
        VideoPrompts.from_cells(cell)
