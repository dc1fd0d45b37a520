"""A 10,000-character expression is truncated with a warning that stays small (issue 22): the
log carries a short prefix of the user's text and its length, never the whole text."""

from __future__ import annotations

import warnings

from surgray.model.text.encoder import short_text
from surgray.model.text.tower import TextTowerConfig, build_text_tower


def test_truncation_warning_carries_a_prefix_and_the_length_only():
    tower = build_text_tower(TextTowerConfig(context_length=8)).eval()
    text = "grasper " + "x" * 9_992
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tower.encode([text])
    assert out.tokens.shape[1] == 8
    messages = [str(w.message) for w in caught if "context" in str(w.message)]
    assert len(messages) == 1
    assert len(messages[0]) < 200 and "10000 characters" in messages[0]
    assert "x" * 60 not in messages[0]


def test_short_text():
    assert short_text("the grasper") == "'the grasper'"
    assert short_text("a" * 100, keep=5) == "'aaaaa'... (100 characters)"
